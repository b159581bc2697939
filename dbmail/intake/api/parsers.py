"""A JSON parser that answers 400, never 500, to bodies nested too deeply.

DRF's JSONParser turns only ValueError into a 400; a body like [[[[...]]]]
makes the decoder raise RecursionError, and one just under the interpreter's
limit parses but fails later when it is encoded again for the database.
Nesting is bounded well below either (nothing in these APIs nests deeper
than a few levels). mailsite's REST_FRAMEWORK setting makes it the parser of
every API of the site, the mailboxes API included.
"""

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


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested more than {MAX_DEPTH} levels deep.") from None
        if depth(data) > MAX_DEPTH:
            raise ParseError(f"JSON parse error - nested more than {MAX_DEPTH} levels deep.")
        return data
