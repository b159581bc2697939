"""JSON as the site's APIs read it: one strict decoder, and a parser that answers 400, never 500.

DRF's JSONParser turns only ValueError into a 400; a body like [[[[...]]]]
makes the decoder raise RecursionError, and one just under the interpreter's
limit parses but fails later when it is encoded again for the database.
Nesting is bounded well below either (nothing in these APIs nests deeper
than a few levels). mailsite's REST_FRAMEWORK setting makes it the parser of
every API of the site, the mailboxes API included; `loads` is also what reads
the JSON text of a multipart form's fields, so both kinds of body obey the
same rules:

- a key given twice in one object is refused: decoders disagree on which
  copy wins (Python's takes the last, others the first), so a proxy or a
  log could read a different recipient than the one we would send to;
- numbers too big for a float (`1e400`, read as infinity) are refused like
  the `NaN` and `Infinity` literals: none can be stored or sent back as JSON.
"""

import json
import math

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 32


def depth(value):
    """How deeply lists and objects nest in `value` (a scalar is 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            return level
        todo.extend((child, level + 1) for child in children)
    return deepest


def _object(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {json.dumps(key)[:100]} is given more than once in one object")
        result[key] = value
    return result


def _float(text):
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:50]} is out of range")
    return value


def _constant(name):
    raise ValueError(f"{name} is not a JSON number")


def loads(text):
    """Decode JSON text by the rules above; any refusal is a ValueError saying why."""
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    if depth(data) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return data


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = parsers.get_encoding(parser_context or {})  # refuses a charset that is no text codec
        try:
            return loads(stream.read().decode(encoding))
        except ValueError as exc:  # UnicodeDecodeError included
            raise ParseError(f"JSON parse error - {exc}.") from None
