"""A TextOfEmail row as a Django EmailMessage, ready for any email backend.

The envelope sender (MAIL FROM, where bounces go) is the message's
from_email; the visible From is a header. Forwards carry their complete MIME
bytes, which are sent as stored with one field put first: the email's own
signed tracking header, as every outbound email has (a copy's row, hence its
key, exists only once the bytes are stored, so the outbox writes it here).
"""

import re
from email.utils import formataddr

from django.core.mail import EmailMessage, EmailMultiAlternatives

from dbmail.track.header import METADATA_KEY, TRACKING_HEADER, tracking_id

_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def with_tracking_header(raw, email_pk):
    """`raw` with its X-Mailsite-Email field(s) replaced by this email's own, put first."""
    raw = bytes(raw)
    end = _HEADER_END.search(raw)
    head_end = end.start() if end else len(raw)
    own = re.compile(rb"(?im)^" + re.escape(TRACKING_HEADER.encode()) + rb":[^\n]*\n?(?:[ \t][^\n]*\n?)*")
    head = raw[:head_end]
    if own.search(head):
        head = own.sub(b"", head).rstrip(b"\r\n")  # `head` ends where its last field does: no line end
    newline = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    return f"{TRACKING_HEADER}: {tracking_id(email_pk)}".encode() + newline + head + raw[head_end:]


class _RawMIME:
    """Stands in for a built message: the stored bytes, with CRLF line ends."""

    def __init__(self, raw):
        self.raw = bytes(raw)

    def as_bytes(self, linesep="\n", **kwargs):
        return _BARE_LF.sub(b"\r\n", self.raw) if linesep == "\r\n" else self.raw

    def as_string(self, **kwargs):
        return self.raw.decode("utf-8", "replace")


class RawEmailMessage(EmailMessage):
    def __init__(self, raw, **kwargs):
        super().__init__(**kwargs)
        self.raw = bytes(raw)  # PostgreSQL hands back a memoryview, which backends cannot copy or pickle

    def message(self, **kwargs):
        return _RawMIME(self.raw)


def to_email_message(email, connection=None, attachments=()):
    """`attachments`: (filename, bytes, content type) triples, the request's files."""
    recipient = formataddr((email.to_name, email.to_address)) if email.to_name else email.to_address
    if email.raw_message is not None:
        raw = with_tracking_header(email.raw_message, email.pk)
        message = RawEmailMessage(raw, from_email=email.envelope_sender, to=[recipient], connection=connection)
        message.metadata = {METADATA_KEY: tracking_id(email.pk)}
        return message
    headers = {
        "From": email.from_header,
        "Message-ID": email.message_id,
        TRACKING_HEADER: tracking_id(email.pk),  # MTA callbacks and bounces name the email by it
        **(email.headers or {}),
    }
    message = EmailMultiAlternatives(
        subject=email.subject,
        body=email.text,
        from_email=email.envelope_sender,
        to=[recipient],
        reply_to=[email.reply_to] if email.reply_to else None,
        headers=headers,
        connection=connection,
    )
    if email.html:
        message.attach_alternative(email.html, "text/html")
    for filename, content, content_type in attachments:
        message.attach(filename, content, content_type)
    # Email service providers (through django-anymail) echo metadata back in their tracking events.
    message.metadata = {METADATA_KEY: headers[TRACKING_HEADER]}
    return message
