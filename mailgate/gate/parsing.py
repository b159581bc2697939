"""Raw bytes -> the parts of a message the gate needs, in bounded time and memory. Never raises.

Anyone can send the gate anything, and the MTA waits for its answer (Postfix
gives a pipe 120 s by default, then retries forever), so every step here is
linear in the message size and capped, whatever the bytes are:

* The header section is found and split by regular expressions over the
  bytes (C speed, no backtracking). Header values are decoded by this module,
  never by the email package's structured parsers: those are quadratic on
  long address lists and recurse on nested comments. Only the first
  MAX_FIELD_BYTES of a value are decoded, RFC 2047 words only while
  DECODE_BUDGET lasts (beyond it the text is shown undecoded), and the
  `headers` dict holds the first MAX_HEADER_FIELDS fields; `header(name)`
  still finds fields beyond them, so a mark of ours added at the end of a
  huge header section is always seen.
* The MIME structure is parsed by the email package with the compat32 API
  (fast: no header objects), fed in chunks, with every header value it reads
  cut to MIME_FIELD_CHARS and 8-bit bytes decoded to text (the `Header`
  objects compat32 returns otherwise break callers that expect str). Only a
  message with at most MAX_PARTS parts, nesting at most MAX_DEPTH levels and
  lines averaging at least MIN_AVERAGE_LINE bytes is parsed whole
  (`complete`); for any other, `message` holds the header section only and
  `incomplete` says why. Callers that walk parts (bounces, mailboxes) do so
  only for complete messages, through `walk`, which is iterative and capped.

`ok` is False only when the bytes have no usable header section at all; such
mail is kept with status "raw".
"""

import codecs
import re
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.policy import Compat32, EmailPolicy
from email.utils import getaddresses, parseaddr

from mailgate.exceptions import TooManyParts

MAX_FIELD_BYTES = 16 * 1024  # of one header value, decoded for the gate
DECODE_BUDGET = 256 * 1024  # characters of RFC 2047 encoded words decoded per message
MAX_HEADER_FIELDS = 1000  # fields in the `headers` dict (and given to the email package)
MAX_VALUES_PER_NAME = 100  # values `header(name)` returns
MIME_FIELD_CHARS = 2048  # of a header value the email package reads (Content-Type, Final-Recipient, ...)
MAX_PARTS = 500  # MIME parts (message objects) of a message parsed whole
MAX_DEPTH = 30  # nesting of multiparts and attached messages
MIN_AVERAGE_LINE = 20  # bytes: a body with more lines than its size / 20 (a flood of empty lines) ...
MIN_LINES = 50_000  # ... and more than this many is not split into parts: the parser keeps every line
_CHUNK = 1 << 20

_FIELD = re.compile(rb"[!-9;-~]+:")
_EOL = rb"(?:\r\n|\n|\r(?!\n))"
# The end of the header section: the first line that is neither a field nor a continuation (an empty
# line included). A search, not a match of (field|continuation)*: that would keep state for every line.
_SECTION_END = re.compile(_EOL + rb"(?![ \t]|[!-9;-~]+:)")
_FIELD_END = re.compile(_EOL + rb"(?![ \t])")  # the line end after which no continuation follows
_BLANK = re.compile(_EOL)
_FOLD = re.compile(rb"(?:\r\n|\n|\r)(?=[ \t])")
_MIME_FIELDS = ("content-type", "content-transfer-encoding", "mime-version")
# The fields the gate reads (policy, loops, forwarding, mailboxes): past MAX_HEADER_FIELDS, one scan finds them all.
WATCHED = frozenset(
    {
        "message-id", "subject", "from", "reply-to", "references", "to", "cc", "date", "return-path",
        "delivered-to", "x-original-to", "auto-submitted", "precedence", "x-autoreply", "x-autorespond",
        "x-auto-response", "x-loop", "list-id", "list-unsubscribe", "list-post", "mailing-list",
        "x-mailing-list", "x-mailsite-email", *_MIME_FIELDS,
    }
)  # fmt: skip


def clean_text(value):
    """Text safe to store: no NUL characters and no lone surrogates (PostgreSQL text can hold neither).

    Lone surrogates are what Python makes of bytes that are not UTF-8 in the
    command line and the environment (an MTA passes an 8-bit envelope address
    through as it came): they are turned back into those bytes and decoded
    again, anything still not UTF-8 becoming U+FFFD.
    """
    text = str(value or "").replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no undecodable byte makes (from an escape such as \\ud800)
            data = text.encode("utf-8", "surrogatepass")
        text = data.decode("utf-8", "replace")
    return text


def _text(value):
    """A header value as one clean line of text."""
    return " ".join(clean_text(value).split())


def _unescape(value):
    """A str from the email package, its 8-bit bytes (surrogate escapes) read as UTF-8."""
    if isinstance(value, str):
        try:
            return value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # already real text
            return value
    return str(value)


class _CappedCompat32(Compat32):
    """compat32 as the email package reads values: cut to MIME_FIELD_CHARS, always str.

    Cutting bounds the quadratic parameter parsing of Content-Type; str (never
    `Header`) is what flufl.bounce's detectors and our own code expect.
    """

    def header_fetch_parse(self, name, value):
        return _unescape(value[:MIME_FIELD_CHARS] if isinstance(value, str) else value)


class _CappedDefault(EmailPolicy):
    """The modern API (get_body, iter_parts) for the mailbox store, values cut before structured parsing."""

    def header_fetch_parse(self, name, value):
        if isinstance(value, str):
            value = value[:MIME_FIELD_CHARS]
        return super().header_fetch_parse(name, value)


COMPAT = _CappedCompat32()
MODERN = _CappedDefault()


def _counting_factory(message_class, limit):
    """A message factory for the email parser that refuses to make more than `limit` messages."""
    made = [-1]  # the parser makes one at start-up to learn the factory's signature

    def make(policy):
        made[0] += 1
        if made[0] > limit:
            raise TooManyParts
        return message_class(policy)

    return make


class _Decoder:
    """Decodes header values, RFC 2047 words only while the message's budget lasts."""

    def __init__(self):
        self.budget = DECODE_BUDGET

    def __call__(self, raw):
        raw = _FOLD.sub(b"", raw[:MAX_FIELD_BYTES])
        text = raw.decode("utf-8", "replace")
        if "=?" not in text or self.budget <= 0:
            return _text(text)
        self.budget -= len(text)
        try:
            return _text(str(make_header(decode_header(text))))
        except Exception:  # unknown charset, broken words: decode what can be, word by word
            return _text(self._leniently(text))

    @staticmethod
    def _leniently(text):
        try:
            chunks = decode_header(text)
        except Exception:  # the words cannot even be split: show them as they are
            return text
        out = []
        for chunk, charset in chunks:
            if isinstance(chunk, str):
                out.append(chunk)
                continue
            try:
                codecs.lookup(charset or "ascii")
                out.append(chunk.decode(charset or "ascii", "replace"))
            except LookupError:
                out.append(chunk.decode("utf-8", "replace"))
        return "".join(out)


class _Fields:
    """The top-level header fields, found in the raw bytes; `values(name)` sees every field, however many.

    Only positions are kept, and values are copied cut to MAX_FIELD_BYTES, so a
    huge field costs one scan and no copy.
    """

    def __init__(self, data, start, end):
        self.data, self.end = data, end
        self.order = []  # (lower name, value start, value end, field start) of the first MAX_HEADER_FIELDS fields
        self.index = {}
        self.rest = end  # where fields beyond the first MAX_HEADER_FIELDS start
        self.longest = 0
        self._watched = None
        pos = start
        while pos < end:
            name = _FIELD.match(data, pos)
            if name is None:  # cannot happen inside a header section; stop rather than loop
                break
            if len(self.order) == MAX_HEADER_FIELDS:
                self.rest = pos
                break
            value_end, pos = self._value_end(name.end())
            key = name.group()[:-1].decode("ascii").lower()
            self.order.append((key, name.end(), value_end, name.start()))
            self.index.setdefault(key, []).append((name.end(), value_end))
            self.longest = max(self.longest, value_end - name.start())

    def _value_end(self, pos):
        """(end of the value that starts at `pos`, start of the next field)."""
        stop = _FIELD_END.search(self.data, pos, self.end)
        return (stop.start(), stop.end()) if stop else (self.end, self.end)

    def raw(self, span):
        value_start, value_end = span
        return self.data[value_start : min(value_end, value_start + MAX_FIELD_BYTES)]

    def field_bytes(self, field_start, value_end):
        return self.data[field_start : min(value_end, field_start + MAX_FIELD_BYTES)]

    @property
    def truncated(self):
        return self.rest < self.end

    def values(self, name):
        """Raw values (cut) of every field called `name`, up to MAX_VALUES_PER_NAME."""
        spans = self.index.get(name, [])[:MAX_VALUES_PER_NAME]
        if self.truncated and len(spans) < MAX_VALUES_PER_NAME:
            spans = (spans + self._beyond(name))[:MAX_VALUES_PER_NAME]
        return [self.raw(span) for span in spans]

    def _beyond(self, name):
        """Spans of `name` past the first MAX_HEADER_FIELDS fields: one scan for all the names the gate reads."""
        if name not in WATCHED:
            return list(self._scan((name,)).get(name, []))
        if self._watched is None:
            self._watched = self._scan(WATCHED)
        return list(self._watched.get(name, []))

    def _scan(self, names):
        found = {}
        for name, _, value_end, _ in find_fields(self.data, names, self.rest, self.end, values=True):
            spans = found.setdefault(name, [])
            if len(spans) < MAX_VALUES_PER_NAME:
                spans.append(value_end)
        return found


@dataclass
class Parsed:
    ok: bool
    error: str = ""
    message: object = None  # email.message.Message (compat32 API, values capped) when ok
    complete: bool = False  # the whole MIME structure is in `message`; else only the header section
    incomplete: str = ""  # why not, when not
    message_id: str = ""
    from_header: str = ""
    from_address: str = ""
    from_name: str = ""
    reply_to: str = ""
    subject: str = ""
    headers: dict = field(default_factory=dict)  # lower-case name -> list of str values (first fields)
    _fields: object = field(default=None, repr=False, compare=False)
    _decode: object = field(default=None, repr=False, compare=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _input: object = field(default=None, repr=False, compare=False)

    def header(self, name):
        """Every value of the top-level field `name` (up to MAX_VALUES_PER_NAME), decoded."""
        name = name.lower()
        if name not in self._cache:
            if self._fields is None:
                self._cache[name] = list(self.headers.get(name, []))
            else:
                self._cache[name] = [self._decode(v) for v in self._fields.values(name)]
        return self._cache[name]

    def first(self, name):
        values = self.header(name)
        return values[0] if values else ""

    def raw_header(self, name):
        """Every value of the top-level field `name` as it was written: no RFC 2047 decoding, folding kept.

        For fields whose exact text matters (Authentication-Results: an
        encoded word must not turn into a trusted name).
        """
        if self._fields is None:
            return []
        return [value.decode("utf-8", "replace") for value in self._fields.values(name.lower())]

    @property
    def data(self):
        """The message's bytes as parsed (for a DKIM verifier, which needs them exactly)."""
        return self._fields.data if self._fields is not None else b""

    @property
    def fields_truncated(self):
        """More than MAX_HEADER_FIELDS header fields (too many for work that is not bounded per field)."""
        return self._fields is not None and self._fields.truncated

    def email_message(self):
        """The message with the email package's modern API (get_body, iter_parts), or None when not complete."""
        if not self.complete:
            return None
        parser = BytesFeedParser(_factory=_counting_factory(EmailMessage, MAX_PARTS), policy=MODERN)
        for chunk in self._input():
            parser.feed(chunk)
        return parser.close()


def header_section(data):
    """(start of the first field, end of the header section, start of the body) in `data`.

    The section ends at the first empty line, or at the first line that is
    neither a field nor a continuation (that line starts the body), as the
    email package reads it. An mbox "From " line before it is skipped.
    """
    start = 0
    if data.startswith(b"From "):
        newline = _BLANK.search(data)
        start = newline.end() if newline else len(data)
    if not _FIELD.match(data, start):
        return start, start, start
    stop = _SECTION_END.search(data, start)
    if stop is None:  # fields up to the very end, the last without a line end
        return start, len(data), len(data)
    end = stop.end()
    blank = _BLANK.match(data, end)
    return start, end, blank.end() if blank else end


def find_fields(data, names, start, end, values=False):
    """(lower-case name, field start, value end, next line start) of each field called one of `names`.

    One regular expression over the header section, so the cost does not
    grow with the fields that are not asked for. With `values`, the third
    item is the value's (start, end) span instead.
    """
    alternatives = b"|".join(re.escape(name.encode("ascii")) for name in sorted(names, key=len, reverse=True))
    # At a line start: after CR or LF (a lone CR ends a line for the email parser too), or at `start`.
    pattern = re.compile(rb"(?i)(?<![^\r\n])(" + alternatives + rb")[ \t]*:")
    for match in pattern.finditer(data, start, end):
        stop = _FIELD_END.search(data, match.end(), end)
        value_end, following = (stop.start(), stop.end()) if stop else (end, end)
        third = (match.end(), value_end) if values else value_end
        yield match.group(1).decode("ascii").lower(), match.start(), third, following


def raw_fields(data, start, end):
    """(lower-case name, the field's bytes without its line end) for every field between `start` and `end`."""
    pos = start
    while pos < end:
        name = _FIELD.match(data, pos)
        if name is None:  # cannot happen inside a header section; stop rather than loop
            return
        stop = _FIELD_END.search(data, name.end(), end)
        value_end, pos = (stop.start(), stop.end()) if stop else (end, end)
        yield name.group()[:-1].decode("ascii").lower(), data[name.start() : value_end]


def parse(raw):
    """Parse `raw` (bytes); returns a Parsed whose `ok` says whether the mail can be routed."""
    try:
        data = bytes(raw)
        first_line = data[:1000].split(b"\n", 1)[0]
        if not (_FIELD.match(first_line) or first_line.startswith(b"From ")):
            return Parsed(ok=False, error="no header section")
        start, end, body = header_section(data)
        fields = _Fields(data, start, end)
        decode = _Decoder()
        parsed = Parsed(ok=True, _fields=fields, _decode=decode)
        for name, value_start, value_end, _ in fields.order:
            parsed.headers.setdefault(name, []).append(decode(fields.raw((value_start, value_end))))
        if not fields.truncated:  # every field is in the dict: lookups need not decode again
            parsed._cache.update({k: v[:MAX_VALUES_PER_NAME] for k, v in parsed.headers.items()})
        parsed.message_id = parsed.first("message-id")[:998]
        parsed.subject = parsed.first("subject")[:998]
        parsed.from_header = parsed.first("from")[:998]
        parsed.reply_to = parsed.first("reply-to")[:998]
        parsed.from_name, parsed.from_address = _first_address(parsed.from_header)
        _structure(parsed, data, fields, start, end, body)
        return parsed
    except Exception as exc:  # the parser must never take the gate down; the raw bytes are already stored
        return Parsed(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])


def _structure(parsed, data, fields, start, end, body):
    """Fill parsed.message: the whole MIME structure when within the limits, else the header section only."""
    plain = not fields.truncated and fields.longest <= MAX_FIELD_BYTES
    if plain:
        header = None  # the bytes as they are, no copy
    else:  # the email package gets the first fields, each cut, and the MIME fields wherever they are
        kept = [fields.field_bytes(field_start, value_end) for _, _, value_end, field_start in fields.order]
        seen = {name for name, *_ in fields.order}
        for name in _MIME_FIELDS:
            if name not in seen:
                kept += [name.encode() + b":" + value for value in fields.values(name)[:1]]
        header = b"\n".join(kept) + b"\n\n"

    def chunks(with_body=True):
        view = memoryview(data)
        if header is None:
            stop = len(data) if with_body else body
            for pos in range(0, stop, _CHUNK):
                yield bytes(view[pos : min(pos + _CHUNK, stop)])
            if not with_body:
                yield b"\n"
            return
        yield header
        if with_body:
            for pos in range(body, len(data), _CHUNK):
                yield bytes(view[pos : pos + _CHUNK])

    lines = max(data.count(b"\n", body), data.count(b"\r", body))
    reason = ""
    if lines > max(MIN_LINES, (len(data) - body) // MIN_AVERAGE_LINE):
        reason = f"{lines} lines in {len(data) - body} bytes"
    else:
        try:
            parsed.message = _feed(chunks(), MAX_PARTS)
            depth = nesting(parsed.message)
            if depth > MAX_DEPTH:
                reason = f"nested {depth} levels deep (more than {MAX_DEPTH})"
        except TooManyParts:
            reason = f"more than {MAX_PARTS} MIME parts"
        except RecursionError:
            reason = "nested too deep for the parser"
    if reason:
        parsed.incomplete = f"body not parsed: {reason}"
        parsed.message = _feed(chunks(with_body=False), MAX_PARTS)
    else:
        parsed.complete = True
        parsed._input = chunks
        if parsed.message.defects:
            parsed.error = "; ".join(type(d).__name__ for d in parsed.message.defects)[:2000]


def _feed(chunks, limit):
    parser = BytesFeedParser(_factory=_counting_factory(Message, limit), policy=COMPAT)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.close()


def _children(part):
    payload = part._payload  # noqa: SLF001 (get_payload() would decode; a list means sub-messages)
    return payload if isinstance(payload, list) else []


def nesting(message):
    """How many levels of multiparts and attached messages `message` has (iteratively: no recursion)."""
    deepest, stack = 0, [(message, 0)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(part))
    return deepest


def walk(message, limit=MAX_PARTS):
    """The message and its parts, depth first as Message.walk() goes, at most `limit` of them, without recursion."""
    stack, count = [message], 0
    while stack and count < limit:
        part = stack.pop()
        count += 1
        yield part
        stack.extend(reversed(_children(part)))


def _first_address(value):
    value = value[:2000]  # the first address is all we need
    try:
        pairs = getaddresses([value])
    except Exception:  # malformed address list (or comments nested past the recursion limit)
        try:
            pairs = [parseaddr(value)]
        except Exception:
            pairs = []
    for name, address in pairs:
        if "@" in address:
            return clean_text(name), clean_text(address).strip().lower()
    return "", ""


def is_null_sender(sender):
    return (sender or "").strip().strip("<>").strip().lower() in ("", "mailer-daemon")


def parseaddr_lower(value):
    try:
        return parseaddr((value or "")[:2000])[1].strip().lower()
    except Exception:  # comments nested past the recursion limit
        return ""
