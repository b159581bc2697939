"""A TextOfEmail row as a Django EmailMessage, ready for any email backend.

The envelope sender (MAIL FROM, where bounces go) is the message's
from_email; the visible From is a header. Forwards carry their complete MIME
bytes, which are sent as stored with one field put first: the email's own
signed tracking header, as every outbound email has (a copy's row, hence its
key, exists only once the bytes are stored, so the outbox writes it here).
The bytes our SMTP backend sends (as_bytes), and those any other backend
takes from the built message, carry the From domain's DKIM signature
(dbmail.send.dkim), made last.
"""

import re

from django.core.mail import EmailMessage, EmailMultiAlternatives

from dbmail.content import addresses
from dbmail.content import headers as header_values
from dbmail.send import dkim
from dbmail.track.header import METADATA_KEY, TRACKING_HEADER, tracking_id

_BARE_LF = re.compile(rb"(?<!\r)\n")
_HEADER_END = re.compile(rb"\r\n\r\n")
_RAW_HEADER_END = re.compile(rb"\r?\n\r?\n")  # stored raw messages end lines with LF or CRLF


def with_tracking_header(raw, email_pk):
    """`raw` with its X-Mailsite-Email field(s) replaced by this email's own, put first."""
    raw = bytes(raw)
    end = _RAW_HEADER_END.search(raw)
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


class _SignedMIME:
    """A built message whose bytes are DKIM-signed when a backend asks for them; otherwise the message itself."""

    def __init__(self, built, email):
        self._built, self._email = built, email

    def __getattr__(self, name):
        return getattr(self._built, name)

    def __getitem__(self, name):
        return self._built[name]

    def __contains__(self, name):
        return name in self._built

    def as_bytes(self, linesep="\n", **kwargs):
        # Signed over the CRLF form, the one SMTP carries; another line end is the same text.
        data = dkim.sign(self._email, self._built.as_bytes(linesep="\r\n", **kwargs))
        return data if linesep == "\r\n" else data.replace(b"\r\n", linesep.encode("ascii"))

    def as_string(self, linesep="\n", **kwargs):
        return self.as_bytes(linesep=linesep, **kwargs).decode("utf-8", "replace")


class _Signed:
    """Mixed into the EmailMessage classes: message() is signed for `signed_for` (a TextOfEmail), if set."""

    signed_for = None

    def message(self, **kwargs):
        built = super().message(**kwargs)
        return _SignedMIME(built, self.signed_for) if self.signed_for is not None else built


class RawEmailMessage(EmailMessage):
    def __init__(self, raw, **kwargs):
        super().__init__(**kwargs)
        self.raw = bytes(raw)  # PostgreSQL hands back a memoryview, which backends cannot copy or pickle

    def message(self, **kwargs):
        return _RawMIME(self.raw)


class _SignedRawEmailMessage(_Signed, RawEmailMessage):
    pass


class _SignedEmailMultiAlternatives(_Signed, EmailMultiAlternatives):
    pass


def to_email_message(email, connection=None, attachments=(), smtputf8=True, sign=True):
    """`attachments`: (filename, bytes, content type) triples, the request's files.

    `smtputf8=False` writes the recipient for a server without SMTPUTF8 (NeedsSMTPUTF8 when
    that is impossible); other backends (an email service's API) get the address as it is.
    With `sign` (sending), the bytes are DKIM-signed; a preview passes False.
    """
    recipient = addresses.display(email.to_name, addresses.wire(email.to_address, smtputf8))
    if email.raw_message is not None:
        raw = with_tracking_header(email.raw_message, email.pk)
        message = (_SignedRawEmailMessage if sign else RawEmailMessage)(
            raw, from_email=email.envelope_sender, to=[recipient], connection=connection
        )
        message.metadata = {METADATA_KEY: tracking_id(email.pk)}
        if sign:
            message.signed_for = email
        return message
    for name, value in (email.headers or {}).items():
        # Django refuses CR and LF only; its email package would fold a vertical tab into a line of its own.
        header_values.refuse_line_breaks(name, str(value))
    headers = {
        "From": email.from_header,
        "Date": header_values.date(),  # Django's own default writes "-0000" for UTC: "zone unknown"
        "Message-ID": email.message_id,
        TRACKING_HEADER: tracking_id(email.pk),  # MTA callbacks and bounces name the email by it
        **(email.headers or {}),
    }
    message = (_SignedEmailMultiAlternatives if sign else EmailMultiAlternatives)(
        subject=email.subject,
        body=email.text,
        from_email=email.envelope_sender,
        to=[recipient],
        reply_to=[email.reply_to] if email.reply_to else None,
        headers=headers,
        connection=connection,
    )
    if sign:
        message.signed_for = email
    if email.html:
        message.attach_alternative(email.html, "text/html")
    for filename, content, content_type in attachments:
        message.attach(filename, content, content_type)
    # Email service providers (through django-anymail) echo metadata back in their tracking events.
    message.metadata = {METADATA_KEY: headers[TRACKING_HEADER]}
    return message


def as_bytes(email, attachments=(), smtputf8=False, sign=True):
    """The message Django's EmailMessage builds for `email`, as the bytes our SMTP backend sends.

    For a message sent with SMTPUTF8, Django would write a UTF-8 local part as an encoded
    word (which is no address at all): the address headers are written here instead. The
    DKIM signature comes last, over the bytes as they will be sent.
    """
    message = to_email_message(email, attachments=attachments, smtputf8=smtputf8, sign=False)
    data = message.message().as_bytes(linesep="\r\n")
    if smtputf8 and email.raw_message is None:
        to = addresses.display(email.to_name, addresses.wire(email.to_address, True))
        data = _replace_header(data, b"To", to.encode("utf-8"))
        data = _replace_header(data, b"From", addresses.header(email.from_header, True).encode("utf-8"))
        if email.reply_to:
            data = _replace_header(data, b"Reply-To", addresses.header(email.reply_to, True).encode("utf-8"))
    return dkim.sign(email, data) if sign else data


def _replace_header(data, name, value):
    """`data` with the (unfolded) value of its top-level header `name` replaced by `value`."""
    end = _HEADER_END.search(data)
    head, rest = (data[: end.start()], data[end.start() :]) if end else (data, b"")
    lines = head.split(b"\r\n")
    out, skipping = [], False
    for line in lines:
        if skipping and line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the header being replaced
        skipping = line.lower().startswith(name.lower() + b":")
        out.append(name + b": " + value if skipping else line)
    return b"\r\n".join(out) + rest
