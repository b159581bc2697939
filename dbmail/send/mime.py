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
import datetime
import secrets
import time
from email.header import Header

from django.conf import settings

from dbmail.content import addresses, headers
from dbmail.send import dkim
from dbmail.track.header import TRACKING_HEADER, tracking_id

_MAX_LINE = 78


def _is_ascii(text):
    return text.isascii()


def _fold(name, value):
    """`Name: value` folded at spaces to about 78 columns (RFC 5322 2.2.3)."""
    if len(name) + len(value) + 2 <= _MAX_LINE:
        return f"{name}: {value}"  # what the loop below makes of a short value, without the loop
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
    headers.refuse_line_breaks(name, value)  # CR, LF and the other breaks the email package folds at
    if _is_ascii(value):
        return _fold(name, value)
    return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def _address_header(name, value):
    # Names are already encoded words here; what is left that is not ASCII is a UTF-8 address (SMTPUTF8).
    headers.refuse_line_breaks(name, value)
    return _fold(name, value)


def _part_body(text):
    """(Content-Transfer-Encoding, encoded body with CRLF line ends)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if _is_ascii(text):
        if max(map(len, lines)) <= 998:
            return "7bit", "\r\n".join(lines)
        if _printable(text):
            return "quoted-printable", _qp_printable(lines)
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii")
    return "quoted-printable", encoded.replace("\n", "\r\n")


# Every control character but tab and LF ("\r" is gone by then), as bytes.translate deletes them.
_CONTROL = bytes(range(0, 9)) + bytes(range(11, 32)) + b"\x7f"


def _printable(text):
    """Whether ASCII `text` holds no control character but tab and LF.

    One C pass that deletes them, and the lengths compared: a regex search over the same text
    cost four times as long, once a message.
    """
    data = text.encode("ascii")
    return len(data.translate(None, _CONTROL)) == len(data)


_QP_LINE = 76  # RFC 2045 6.7 (5): encoded lines of at most 76 characters, the soft break's "=" included
_QP_PIECE = _QP_LINE - 1  # a soft break's piece: its "=" makes the 76th character


def _qp_printable(lines):
    """Quoted-printable of printable ASCII lines (a plain text with a line too long for 7bit), CRLF line ends.

    binascii.b2a_qp looks at every character of the text, and an ordinary letter with one long
    paragraph is little more than "=" escaped and the long lines broken: this does just that, a
    line at a time, and leaves the lines that need neither (most of them) as they are. Anything
    else (control characters, non-ASCII text) goes through b2a_qp.
    """
    return "\r\n".join(
        [
            line if len(line) <= _QP_LINE and "=" not in line and line[-1:] not in _WHITE else _qp_cached(line)
            for line in lines
        ]
    )


_WHITE = (" ", "\t")
# The encoded form of lines that needed encoding, by line: a newsletter's long paragraphs are the same
# in every one of its messages (only a greeting or a link differs), and looking a line up costs a
# fraction of encoding it again. Bounded: when full it starts over (what repeats comes back at once),
# and a line longer than a paragraph is not kept (256 of them could otherwise hold a great deal).
_QP_CACHE = {}
_QP_CACHE_SIZE = 256
_QP_CACHE_LINE = 8192


def _qp_cached(line):
    if len(line) > _QP_CACHE_LINE:
        return _qp_line(line)
    encoded = _QP_CACHE.get(line)
    if encoded is None:
        if len(_QP_CACHE) >= _QP_CACHE_SIZE:
            _QP_CACHE.clear()
        encoded = _QP_CACHE[line] = _qp_line(line)
    return encoded


def _qp_line(line):
    """One line of _qp_printable: "=" escaped, white space at its end escaped, cut at soft line breaks."""
    if "=" in line:
        line = line.replace("=", "=3D")
    last = line[-1:]
    if last in _WHITE:  # RFC 2045 6.7 (3): no white space at the end of a line
        line = line[:-1] + ("=20" if last == " " else "=09")
    end = len(line)
    if end <= _QP_LINE:
        return line
    first = line.find("=")
    if first == -1:
        return _soft_breaks(line)
    # The cuts before the first "=" cannot split an escape: every _QP_PIECE characters, in one pass
    # (a line is often one long paragraph whose only escape is its last space's).
    plain = min(first // _QP_PIECE, (end - _QP_LINE + _QP_PIECE - 1) // _QP_PIECE)
    pieces = [line[i : i + _QP_PIECE] for i in range(0, plain * _QP_PIECE, _QP_PIECE)]
    start = plain * _QP_PIECE
    while end - start > _QP_LINE:
        cut = start + _QP_LINE - 1
        escape = line.find("=", cut - 2, cut)  # an "=" always begins an escape: never cut one in two
        if escape != -1:
            cut = escape
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return "=\r\n".join(pieces)  # soft line breaks


def _soft_breaks(line):
    """A line longer than _QP_LINE without "=" in it, cut where _qp_printable's loop would cut it.

    No escape to keep whole: that loop cuts every _QP_PIECE characters, up to a last piece of at
    most _QP_LINE; these are the same cuts in one pass.
    """
    starts = range(0, len(line) - _QP_LINE + _QP_PIECE, _QP_PIECE)
    return "=\r\n".join([line[i : i + _QP_PIECE] for i in starts])


def _part(subtype, text):
    encoding, body = _part_body(text)
    return f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}'


_TAKEN = {"from", "to", "subject", "date", "message-id", "reply-to", "mime-version", "content-type"}
_TAKEN.add(TRACKING_HEADER.lower())
_dates = {}  # (second, localtime) -> the Date header's value: worked out once a second, not once a message


def _date():
    second = int(time.time())
    key = (second, settings.EMAIL_USE_LOCALTIME)
    value = _dates.get(key)
    if value is None:
        _dates.clear()
        value = _dates[key] = headers.date(datetime.datetime.fromtimestamp(second, datetime.UTC))
    return value


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
        f"Date: {_date()}",
        f"Message-ID: {email.message_id}",
        f"{TRACKING_HEADER}: {tracking_id(email.pk)}",  # MTA callbacks and bounces name the email by it
    ]
    if email.reply_to:
        lines.append(_address_header("Reply-To", addresses.header(email.reply_to, smtputf8)))
    for name, value in (email.headers or {}).items():
        if name.lower() not in _TAKEN and name.isascii() and ":" not in name and " " not in name:
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
