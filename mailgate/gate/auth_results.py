"""Authentication-Results header fields (RFC 8601) read into the few facts the gate uses.

    field = parse('mx.ourorg.example; dkim=pass (good) header.d=ourorg.example; spf=fail')
    field.authserv_id             # "mx.ourorg.example"
    field.results                 # [Result("dkim", "pass", {"header.d": "ourorg.example"}), Result("spf", ...)]

The grammar (RFC 8601 2.2): an authserv-id, an optional version, then one
`; method=result [reason=...] [ptype.property=value ...]` per result.
Comments (nested parentheses, with backslash escapes) count as white space
anywhere; a value may be a quoted string ("=" and ";" inside it are text).
Method versions (`dkim/1`) are dropped; names and results are lower-case.

Anyone can write such a field, so what it says counts only when our own MTA
wrote it: mailgate.gate.proof reads only fields whose authserv-id is trusted.
The parser is lenient where that is safe: a result it cannot read is left
out (it proves nothing), while the authserv-id is still read, so a field of
our MTA's that we misread hides the ones below it instead of letting them
through. `version` and `plain` (the authserv-id written as it is at the
start, nothing before it, no quotes) let the reader refuse a field whose id
only reads as ours once comments and quotes are taken away. Time is linear
in the value; the value is capped.
"""

import re
from dataclasses import dataclass, field

MAX_CHARS = 16 * 1024  # of one field value read (parsing.MAX_FIELD_BYTES is the same)
MAX_RESULTS = 50  # results read from one field
_KEYWORD = re.compile(r"[a-z0-9][a-z0-9_-]*")
_PLAIN_START = re.compile(r"[ \t\r\n]*([^ \t\r\n;()\"]*)(?=[ \t\r\n;(]|\Z)")  # what docs/mta.md's check matches


@dataclass
class Result:
    method: str  # "dkim", "spf", "dmarc"...
    result: str  # "pass", "fail", "none"...
    properties: dict = field(default_factory=dict)  # "header.from" -> "ourorg.example" (the first of each)


@dataclass
class Field:
    authserv_id: str  # lower-case
    results: list = field(default_factory=list)
    version: str = "1"  # as written after the authserv-id ("1" when none is)
    plain: bool = True  # the authserv-id opens the value as it is, no comment before it and no quotes in it


def parse(value):
    """The Field of one Authentication-Results value, or None when it has no authserv-id at all."""
    segments = _segments(value[:MAX_CHARS])
    if not segments or not segments[0] or segments[0][0] in ("=", ""):  # "" from an empty quoted string
        return None
    parsed = Field(segments[0][0].lower(), version=segments[0][1] if len(segments[0]) > 1 else "1")
    # What an MTA's header check can match (docs/mta.md): a sender's field whose id hides behind a comment or
    # quotes ("(x) mx.ourorg.example", "mx.ourorg.exa""mple") gets past it and must not read as written plainly.
    plain = _PLAIN_START.match(value[:MAX_CHARS])
    parsed.plain = plain is not None and plain.group(1).lower() == parsed.authserv_id
    for tokens in segments[1 : MAX_RESULTS + 1]:
        result = _result(_joined(tokens))
        if result is not None:
            parsed.results.append(result)
    return parsed


def _segments(value):
    """The value cut at ";" into lists of tokens: "=" or a word, comments and white space removed.

    A word is a run of characters with no white space, "=", ";" or
    parentheses outside quotes; quoted strings are unquoted and join the
    characters they touch (as in `"a b"@example.org`).
    """
    segments, tokens, word, quoted = [], [], [], False
    depth = 0  # of comments
    i, n = 0, len(value)

    def end_word():
        nonlocal word
        if word:
            tokens.append("".join(word))
            word = []

    while i < n:
        c = value[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif quoted:
            if c == "\\" and i + 1 < n:
                i += 1
                word.append(value[i])
            elif c == '"':
                quoted = False
            else:
                word.append(c)
        elif c == '"':
            quoted = True
            word.append("")  # an empty quoted string is still a word
        elif c == "(":
            end_word()
            depth = 1
        elif c in " \t\r\n":
            end_word()
        elif c == "=":
            end_word()
            tokens.append("=")
        elif c == ";":
            end_word()
            segments.append(tokens)
            tokens = []
        elif c != ")":
            word.append(c)
        i += 1
    if not quoted:  # a quoted string never closed is no word: what it swallowed is not read as text
        end_word()
    segments.append(tokens)
    return segments


def _joined(tokens):
    """Tokens with names written with spaces around "." or "/" (`header . d`, `dkim / 1`) made one word."""
    out = []
    for token in tokens:
        after_value = len(out) >= 2 and out[-2] == "="  # "x.example." then "header.d": two words
        if out and token != "=" and out[-1] != "=" and not after_value and (token[:1] in "./" or out[-1][-1:] in "./"):
            out[-1] += token
        else:
            out.append(token)
    return out


def _result(tokens):
    """A Result from `method = result [name = value]...`; None when it does not start that way."""
    if len(tokens) < 3 or tokens[1] != "=" or "=" in (tokens[0], tokens[2]):
        return None
    method, outcome = tokens[0].split("/", 1)[0].lower(), tokens[2].lower()
    if not (_KEYWORD.fullmatch(method) and _KEYWORD.fullmatch(outcome)):
        return None
    result = Result(method, outcome)
    rest = tokens[3:]
    while len(rest) >= 3:
        name, equals, value = rest[:3]
        if equals != "=" or name == "=" or value == "=":
            rest = rest[1:]  # not a name=value pair here: look further on
            continue
        name = name.lower()
        if "." in name and name != "reason":
            result.properties.setdefault(name, value)
        rest = rest[3:]
    return result
