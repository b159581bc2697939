"""Lean MIME for the common email: a text part, or text and HTML alternatives.

Django's EmailMessage goes through the email package's generic generator,
which costs about 200 µs per message: more than the SMTP conversation
itself, and the reason a bulk sender falls far behind its connection. The
shape of a comm-panel email is always the same, so it is written directly
here, using the email package only for what needs care (RFC 2047 words for
non-ASCII headers). Addresses are written by dbmail.content.addresses: IDN
domains as A-labels, UTF-8 local parts only in a message sent with SMTPUTF8
(whose address headers are then UTF-8, RFC 6532). Anything else
(attachments, raw forwards) returns None and goes through Django's
EmailMessage.

tests/test_mime.py checks, over generated input, that a parser reads the
same headers and bodies from this output as from Django's.
"""

import binascii
import secrets
from email.header import Header

from dbmail.content import addresses, headers
from dbmail.send import dkim
from dbmail.track.header import TRACKING_HEADER, tracking_id

_MAX_LINE = 78


def _is_ascii(text):
    return text.isascii()


def _fold(name, value):
    """`Name: value` folded at spaces to about 78 columns (RFC 5322 2.2.3)."""
    lines, current, empty = [], f"{name}:", True
    for word in value.split(" "):
        if not empty and len(current) + 1 + len(word) > _MAX_LINE:
            lines.append(current)
            current, empty = "", True
        current += " " + word
        empty = False
    lines.append(current)
    return "\r\n".join(lines)


def _header(name, value):
    value = str(value)
    if "\n" in value or "\r" in value:
        raise ValueError(f"Header values can't contain newlines ({name})")  # as Django refuses them
    if _is_ascii(value):
        return _fold(name, value)
    return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def _address_header(name, value):
    # Names are already encoded words here; what is left that is not ASCII is a UTF-8 address (SMTPUTF8).
    if "\n" in value or "\r" in value:
        raise ValueError(f"Header values can't contain newlines ({name})")
    return _fold(name, value)


def _part_body(text):
    """(Content-Transfer-Encoding, encoded body with CRLF line ends)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _is_ascii(text) and max(map(len, text.split("\n"))) <= 998:
        return "7bit", text.replace("\n", "\r\n")
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii")
    return "quoted-printable", encoded.replace("\n", "\r\n")


def _part(subtype, text):
    encoding, body = _part_body(text)
    return f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}'


def compose(email, smtputf8=False, sign=True):
    """The complete message bytes for `email` (DKIM-signed), or None when Django's EmailMessage must build it.

    `smtputf8`: the message goes out with SMTPUTF8, so its addresses may keep UTF-8 local
    parts; without it such an address raises addresses.NeedsSMTPUTF8. `sign=False`: unsigned.
    """
    if email.raw_message is not None:
        return None
    to = addresses.display(email.to_name, addresses.wire(email.to_address, smtputf8))
    lines = [
        _address_header("From", addresses.header(email.from_header, smtputf8)),
        _address_header("To", to),
        _header("Subject", email.subject),
        f"Date: {headers.date()}",
        f"Message-ID: {email.message_id}",
        f"{TRACKING_HEADER}: {tracking_id(email.pk)}",  # MTA callbacks and bounces name the email by it
    ]
    if email.reply_to:
        lines.append(_address_header("Reply-To", addresses.header(email.reply_to, smtputf8)))
    taken = {"from", "to", "subject", "date", "message-id", "reply-to", "mime-version", "content-type"}
    taken.add(TRACKING_HEADER.lower())
    for name, value in (email.headers or {}).items():
        if name.lower() not in taken and name.isascii() and ":" not in name and " " not in name:
            lines.append(_header(name, value))
    lines.append("MIME-Version: 1.0")
    if email.html:
        boundary = "=_" + secrets.token_hex(12)
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        # Like Django, an empty text body is left out rather than sent as an empty part.
        parts = ([_part("plain", email.text)] if email.text else []) + [_part("html", email.html)]
        body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--\r\n"
    else:
        encoding, body = _part_body(email.text)
        lines.append('Content-Type: text/plain; charset="utf-8"')
        lines.append(f"Content-Transfer-Encoding: {encoding}")
    head = "\r\n".join(lines)
    data = f"{head}\r\n\r\n{body}".encode("utf-8" if smtputf8 else "ascii")
    return dkim.sign(email, data) if sign else data
