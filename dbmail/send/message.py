"""A TextOfEmail row as a Django EmailMessage, ready for any email backend.

The envelope sender (MAIL FROM, where bounces go) is the message's
from_email; the visible From is a header. Forwards carry their complete MIME
bytes, which are sent exactly as stored.
"""

import re
from email.utils import formataddr

from django.core.mail import EmailMessage, EmailMultiAlternatives

from dbmail.track.header import METADATA_KEY, TRACKING_HEADER, tracking_id

_BARE_LF = re.compile(rb"(?<!\r)\n")


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
        return RawEmailMessage(
            email.raw_message, from_email=email.envelope_sender, to=[recipient], connection=connection
        )
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
