"""Lines over 998 octets in a forward: header lines folded, parts sent as they are re-encoded base64.

SMTP servers refuse a message with a line over 998 octets (RFC 5322 2.1.1;
Exchange and Gmail refuse it, Postfix with strict limits too) or break it
where they like: a forward with one would be lost for every member. What
can carry such a line is changed, and nothing else:

* a header line is folded at its whitespace (unfolding gives the value back);
* a leaf part sent as it is (7bit, 8bit, binary) gets base64 for its body
  and "Content-Transfer-Encoding: base64" instead of its own: the same
  bytes once decoded. So does a quoted-printable one whose writer put a
  long line in it all the same (its text decoded first, leniently, as
  readers decode it); a base64 one (or an attached message wrongly encoded
  base64 as a whole) has its long lines broken instead (decoders skip line
  breaks: the same bytes). Only that part: every other part, the boundaries,
  the preamble and the epilogue keep their bytes, and the MIME structure
  stays, nested message/rfc822 parts included (their own header lines are
  folded, their offending parts re-encoded).

The body is split by the boundaries the email package found (the parse of
mailgate.gate.parsing, capped in parts and depth), so this is one pass per
level over the bytes of the parts that hold a long line. Where the split
does not agree with the parse (a broken multipart), that part is left as it
came: re-encoding what cannot be delimited for sure would change content.
"""

import base64
import binascii
import re

from mailgate.gate import parsing

MAX_LINE = 998  # octets, RFC 5322 2.1.1
# A line as an SMTP server counts it: up to LF, less the CR of a CRLF (a lone CR is inside the line:
# "a" * 600 + CR + "b" * 600 is one line of 1201 octets, refused). Anchored at line starts so the
# search is one pass: unanchored, a text of 998-octet lines was tried again at every offset
# (14 s for 10 MB).
LONG_LINE = re.compile(rb"(?m)^(?:[^\n]{%d,}|[^\n]{%d}(?<!\r))" % (MAX_LINE + 2, MAX_LINE + 1))
SENT_AS_IS = ("7bit", "8bit", "binary")
# Leaves whose long lines are cured by base64. Quoted-printable is among them: its lines are at most 76
# octets when written right, but some writers leave a long one, and the SMTP server refuses it all the same.
REENCODED = (*SENT_AS_IS, "quoted-printable")
_EOL = re.compile(rb"\r\n|\n|\r")
_CTE = "content-transfer-encoding"


def has_long_line(data):
    return LONG_LINE.search(data) is not None


# --- Header lines ---


def refold(head, linesep):
    """A header section whose lines over MAX_LINE are folded at their whitespace.

    Folding puts a line break before a space or tab, which unfolding takes
    away again: every field keeps its value. A stretch of more than MAX_LINE
    octets without whitespace cannot be folded and stays as it is.
    """
    return LONG_LINE.sub(lambda match: _fold_line(match.group(), linesep), head)


def _fold_line(line, linesep):
    pieces, start = [], 0
    while len(line) - start > MAX_LINE:
        window = line[start + 1 : start + MAX_LINE + 1]
        cut = max(window.rfind(b" "), window.rfind(b"\t"))
        if cut < 0:  # none within reach: the next whitespace further on, if any
            ahead = [i for i in (line.find(b" ", start + MAX_LINE), line.find(b"\t", start + MAX_LINE)) if i > 0]
            if not ahead:
                break
            cut = min(ahead)
        else:
            cut += start + 1
        pieces.append(line[start:cut])
        start = cut
    pieces.append(line[start:])
    return linesep.join(pieces)


# --- Bodies ---


def _encoding(value):
    return (value or "7bit").strip().lower()


def _leaf(part):
    return part.get_content_maintype() not in ("multipart", "message")


def _reencoded(part):
    """Whether a parsed part is a leaf whose long lines base64 cures (REENCODED)."""
    return _leaf(part) and _encoding(part.get(_CTE)) in REENCODED


def decoded(body, encoding):
    """A leaf's body to re-encode: quoted-printable taken off (leniently, as readers do), else as it is."""
    return binascii.a2b_qp(body) if encoding == "quoted-printable" else body


def needs_base64(body, parsed):
    """Whether a whole message body must be sent base64-encoded: a single part (REENCODED) with a long line.

    (A multipart's or an attached message's parts are re-encoded one by one: reencode_parts.)
    """
    if not has_long_line(body) or not (parsed.ok and parsed.complete):
        return False
    return _leaf(parsed.message) and _encoding(parsed.first(_CTE)) in REENCODED


def whole_as_base64(body, parsed, linesep):
    """The body of a message for which needs_base64 is true, base64-encoded (its own encoding taken off)."""
    return as_base64(decoded(body, _encoding(parsed.first(_CTE))), linesep)


def as_base64(body, linesep):
    """`body` base64-encoded in lines of 76, ending with a line break when `body` did."""
    encoded = base64.encodebytes(body).rstrip(b"\n").replace(b"\n", linesep)
    return encoded + linesep if body.endswith((b"\n", b"\r")) else encoded


def reencode_parts(body, message, linesep):
    """The body of a multipart or message/rfc822 `message` with its offending leaf parts re-encoded.

    `message` is the complete parse of the message (mailgate.gate.parsing);
    for any other message the body comes back as it is.
    """
    if not has_long_line(body):
        return body
    return _body(body, message, linesep)


def _body(body, part, linesep):
    if part.get_content_maintype() == "multipart" and part.is_multipart():
        return _multipart(body, part, linesep)
    encoding = _encoding(part.get(_CTE))
    if encoding == "base64" and (_leaf(part) or part.get_content_maintype() == "message"):
        # Decoders skip line breaks: the same bytes once decoded. (An attached message encoded as a whole,
        # which RFC 2046 forbids and some writers do, is such text too: read as a message, its base64 would
        # have been re-encoded as if it were the body of one.)
        return _wrap(body, linesep)
    if part.get_content_type() == "message/rfc822" and part.is_multipart() and encoding in SENT_AS_IS:
        inner = part.get_payload()  # [the attached message]
        return _entity(body, inner[0], linesep) if inner else body
    return body


def _entity(data, part, linesep):
    """One entity (its header section and body) with its long lines dealt with."""
    if not has_long_line(data):
        return data
    blank = _EOL.match(data)
    if blank:  # no header fields: the body follows the empty line (the part's type is the default)
        prefix, head, separator, body = b"", b"", blank.group(), data[blank.end() :]
    else:
        start, end, body_start = parsing.header_section(data)
        prefix, head, separator, body = data[:start], data[start:end], data[end:body_start], data[body_start:]
    if _reencoded(part):
        if has_long_line(body):
            head = _with_base64_encoding(head, linesep)
            separator = separator or linesep  # the new field needs the empty line that ends the section
            body = as_base64(decoded(body, _encoding(part.get(_CTE))), linesep)
    else:
        body = _body(body, part, linesep)
    return prefix + refold(head, linesep) + separator + body


def _with_base64_encoding(head, linesep):
    """A part's header section with "Content-Transfer-Encoding: base64" instead of any of its own."""
    pieces, pos = [], 0
    for _, field_start, _, following in parsing.find_fields(head, (_CTE,), 0, len(head)):
        pieces.append(head[pos:field_start])
        pos = following
    pieces.append(head[pos:])
    kept = b"".join(pieces)
    if kept and not kept.endswith((b"\n", b"\r")):
        kept += linesep
    return kept + b"Content-Transfer-Encoding: base64" + linesep


def _delimiters(boundary):
    # As the email package's feedparser reads them: a whole line of "--" boundary, "--" for the last,
    # trailing blanks; the line break before it belongs to the delimiter (RFC 2046 5.1.1).
    return re.compile(rb"(?:(?<=[\r\n])|\A)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|\n|\r|\Z)")


def _multipart(body, part, linesep):
    boundary = part.get_boundary()
    children = part.get_payload()
    if not boundary or not isinstance(children, list):
        return body
    try:
        pattern = _delimiters(boundary.encode("ascii", "surrogateescape"))
    except UnicodeEncodeError:  # a boundary of characters no byte makes: not one the parser split by
        return body
    found = []
    for match in pattern.finditer(body):
        found.append(match)
        if match.group(1):  # the close delimiter: what follows is the epilogue
            break
    closed = bool(found) and found[-1].group(1) is not None
    opening = found[:-1] if closed else found
    if len(opening) != len(children):  # the split disagrees with the parse: leave it as it came
        return body
    pieces = [_wrap(body[: found[0].start()], linesep)] if found else []
    for index, (match, child) in enumerate(zip(opening, children, strict=True)):
        following = found[index + 1].start() if index + 1 < len(found) else len(body)
        # The line break before the next delimiter is the delimiter's (so is the last one of an unclosed part).
        end = max(match.end(), following - _line_end_before(body, following))  # an empty part has none
        pieces += [body[match.start() : match.end()], _entity(body[match.end() : end], child, linesep)]
        pieces.append(body[end:following])
    if closed:
        pieces += [body[found[-1].start() : found[-1].end()], _wrap(body[found[-1].end() :], linesep)]
    return b"".join(pieces)


def _line_end_before(data, pos):
    """How many octets the line break ending just before `pos` has (0 when none does)."""
    if data[pos - 2 : pos] == b"\r\n":
        return 2
    return 1 if pos > 0 and data[pos - 1 : pos] in (b"\n", b"\r") else 0


def _wrap(text, linesep):
    """A preamble, an epilogue or base64 text with its long lines broken: no reader shows the first two,
    base64 decoders skip line breaks, and SMTP refuses long lines."""
    if not has_long_line(text):
        return text

    def broken(match):
        line = match.group()
        cr = b"\r" if line.endswith(b"\r") else b""  # a CRLF's CR (LONG_LINE's match may end with it) stays
        line = line[: len(line) - len(cr)]
        return linesep.join(line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE)) + cr

    return LONG_LINE.sub(broken, text)
