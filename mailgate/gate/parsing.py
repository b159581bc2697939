"""Raw bytes -> the parts of a message the gate needs. Never raises.

The message is parsed with the `email` package's modern policy. Header
values that cannot be decoded are read as empty rather than failing: a
broken header must not lose the mail. `ok` is False only when the bytes have
no usable header section at all; such mail is kept with status "raw".
"""

import email
import re
from dataclasses import dataclass, field
from email import policy
from email.utils import getaddresses, parseaddr

_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:")


@dataclass
class Parsed:
    ok: bool
    error: str = ""
    message: object = None  # email.message.EmailMessage when ok
    message_id: str = ""
    from_header: str = ""
    from_address: str = ""
    from_name: str = ""
    reply_to: str = ""
    subject: str = ""
    headers: dict = field(default_factory=dict)  # lower-case name -> list of str values

    def header(self, name):
        return self.headers.get(name.lower(), [])

    def first(self, name):
        values = self.header(name)
        return values[0] if values else ""


def clean_text(value):
    """Text safe to store: no NUL characters (PostgreSQL text cannot hold them)."""
    return str(value or "").replace("\x00", "")


def _text(value):
    """A header value as one clean line of text."""
    return " ".join(clean_text(value).split())


def _safe_items(message):
    """(name, value) pairs; a value the policy cannot parse falls back to its raw text."""
    items = []
    for name, raw in message.raw_items():  # unparsed pairs: reading through the policy may raise on bad values
        try:
            value = message.policy.header_fetch_parse(name, raw)
            value = _text(value)
        except Exception:  # any malformed header: keep its raw text, decoded leniently
            value = _text(raw if isinstance(raw, str) else repr(raw))
        items.append((name, value))
    return items


def parse(raw):
    """Parse `raw` (bytes); returns a Parsed whose `ok` says whether the mail can be routed."""
    try:
        data = bytes(raw)
        first_line = data[:1000].split(b"\n", 1)[0]
        if not (_HEADER_LINE.match(first_line) or first_line.startswith(b"From ")):
            return Parsed(ok=False, error="no header section")
        message = email.message_from_bytes(data, policy=policy.default)
        headers = {}
        for name, value in _safe_items(message):
            headers.setdefault(name.lower(), []).append(value)
        parsed = Parsed(ok=True, message=message, headers=headers)
        parsed.message_id = parsed.first("message-id")[:998]
        parsed.subject = parsed.first("subject")[:998]
        parsed.from_header = parsed.first("from")[:998]
        parsed.reply_to = parsed.first("reply-to")[:998]
        parsed.from_name, parsed.from_address = _first_address(parsed.from_header)
        if message.defects:
            parsed.error = "; ".join(type(d).__name__ for d in message.defects)[:2000]
        return parsed
    except Exception as exc:  # the parser must never take the gate down; the raw bytes are already stored
        return Parsed(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])


def _first_address(value):
    try:
        pairs = getaddresses([value])
    except Exception:  # malformed address list
        pairs = [parseaddr(value)]
    for name, address in pairs:
        if "@" in address:
            return clean_text(name), clean_text(address).strip().lower()
    return "", ""


def is_null_sender(sender):
    return (sender or "").strip().strip("<>").strip().lower() in ("", "mailer-daemon")


def parseaddr_lower(value):
    return parseaddr(value or "")[1].strip().lower()
