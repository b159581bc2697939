"""The render budget: how much one rendering of a composed template may make and repeat.

Composed templates are written by staff and API users, and dbmail_cron renders
them for every recipient: a filter asked for a billion-character field, or
loops nested over long strings, would stall or crash the run for everyone. So
each rendering (render() here) gets a Budget, and the engines of
dbmail.content.rendering load this library over Django's builtins:

- a result that would be longer than DBMAIL_MAX_RENDERED_BYTES is refused:
  the filters whose argument says how much to make (ljust, rjust, center,
  stringformat, floatformat, join's separator) and {% lorem %} check their
  argument before they make it, and each loop its output;
- everything made along the way counts: every filter's result (and what it
  read), every printed variable ({% firstof %} and {% cycle %} too) and the
  literal text of every loop iteration, WORK_FACTOR times the cap in all
  (text a template makes and then drops, or reads over and over, costs the
  same memory and time);
- each {% for %} (and {% regroup %}) counts its iterations before it starts,
  an iteration weighing one for each tag, variable and text inside the loop,
  LOOP_ITERATIONS in all.

Over budget raises RenderLimitExceeded (a RenderError) with the reason in
words; the first reason sticks, so a tag that swallows errors ({% if %}'s
operators do) cannot hide it. Within budget, output is Django's to the byte:
the library calls Django's own filters and nodes and only counts.
"""

import functools
import re
from contextvars import ContextVar

from django.template import Engine, Library, defaultfilters, defaulttags
from django.template.base import Node, TextNode, VariableNode

from dbmail.conf import settings as conf
from dbmail.exceptions import RenderLimitExceeded

LOOP_ITERATIONS = 50_000
WORK_FACTOR = 8  # text made along the way, in multiples of the output cap
_LIST_ITEM_COST = 8  # a list's item costs a pointer at least: count lists at this many characters an item

_current = ContextVar("dbmail_render_budget", default=None)


def size_words(limit):
    """`limit` bytes for a reader: 1 MB, 512 kB, 20,000 bytes."""
    for unit, name in ((1024 * 1024, "MB"), (1024, "kB")):
        if limit >= unit and limit % unit == 0:
            return f"{limit // unit:,} {name}"
    return f"{limit:,} bytes"


def too_big(limit):
    return f"the template's output would exceed {size_words(limit)} (DBMAIL_MAX_RENDERED_BYTES)"


class Budget:
    """What one rendering may still make (characters) and repeat (loop iterations); `limit`: the output cap."""

    __slots__ = ("limit", "work", "steps", "exceeded")

    def __init__(self, limit):
        self.limit = limit
        self.work = limit * WORK_FACTOR
        self.steps = LOOP_ITERATIONS
        self.exceeded = ""

    def over(self, reason):
        self.exceeded = self.exceeded or reason
        raise RenderLimitExceeded(self.exceeded)

    def spend(self, chars):
        """Count `chars` characters made."""
        self.work -= chars
        if self.work < 0 or self.exceeded:
            self.over(
                f"the template would work through more than {size_words(self.limit * WORK_FACTOR)} of text while "
                f"rendering ({WORK_FACTOR} times DBMAIL_MAX_RENDERED_BYTES: what its filters read and make, its "
                "variables print and its loops repeat)"
            )

    def make(self, chars):
        """Before making one result of `chars` characters: refused when longer than the output may be."""
        if chars > self.limit:
            self.over(too_big(self.limit))
        self.spend(chars)

    def repeat(self, times):
        self.steps -= times
        if self.steps < 0 or self.exceeded:
            self.over(
                f"the template's loops would run more than {LOOP_ITERATIONS:,} iterations "
                "(an iteration counts once for each tag, variable and text inside the loop)"
            )


def current():
    """The budget of the rendering under way; outside render() a fresh one, so each result is still capped."""
    return _current.get() or Budget(conf.DBMAIL_MAX_RENDERED_BYTES)


def check_output(text, limit):
    """Raise RenderLimitExceeded when `text` is longer than `limit` bytes in UTF-8."""
    chars = len(text)
    # A character is 1 to 4 bytes: encode only when the count of characters cannot tell.
    if chars * 4 > limit and (chars > limit or len(text.encode("utf-8", "surrogatepass")) > limit):
        raise RenderLimitExceeded(too_big(limit))


def render(template, context, limit):
    """`template` rendered with `context` within a fresh Budget of `limit` bytes of output."""
    budget = Budget(limit)
    token = _current.set(budget)
    try:
        text = template.render(context)
    except RenderLimitExceeded:
        raise
    except Exception:
        if budget.exceeded:  # something caught the budget's error and failed otherwise
            raise RenderLimitExceeded(budget.exceeded) from None
        raise
    finally:
        _current.reset(token)
    if budget.exceeded:
        raise RenderLimitExceeded(budget.exceeded)
    check_output(text, limit)
    return text


def count_variables(template):
    """Make each printed variable of a compiled `template` count its text (done once, as it is compiled)."""
    for node in template.nodelist.get_nodes_by_type(VariableNode):
        filters = node.filter_expression.filters
        # A last filter that counts its result has counted nearly all of it (only escaping may add to it).
        if not (filters and getattr(filters[-1][0], "counts_its_result", False)):
            node.__class__ = CountedVariableNode
    return template


class CountedVariableNode(VariableNode):
    def render(self, context):
        text = VariableNode.render(self, context)
        # Budget.spend spelled out: this runs for every variable the engine prints.
        budget = _current.get()
        if budget is not None:
            budget.work -= len(text)
            if budget.work < 0:
                budget.spend(0)
        return text


register = Library()


# --- filters: each result counted; those sized by their argument checked first ---


def _cost(result):
    if isinstance(result, str):
        return len(result)
    if isinstance(result, list | tuple):
        return len(result) * _LIST_ITEM_COST
    return 0


def _register(name, original, func):
    register.filter(
        name,
        functools.wraps(original)(func),
        is_safe=getattr(original, "is_safe", False),
        needs_autoescape=getattr(original, "needs_autoescape", False),
        expects_localtime=getattr(original, "expects_localtime", False),
    )


def _counted(original):
    def counted(value, *args, **kwargs):
        result = original(value, *args, **kwargs)
        # Budget.spend spelled out: this runs for every filter the engine applies. What it read counts too:
        # `{{ big|wordcount }}` written many times makes little but works through all of `big` each time.
        budget = _current.get()
        if budget is not None:
            budget.work -= (len(result) if isinstance(result, str) else _cost(result)) + (
                len(value) if isinstance(value, str) else _cost(value)
            )
            if budget.work < 0:
                budget.spend(0)
        return result

    counted.counts_its_result = True
    return counted


def _number(arg):
    try:
        return abs(int(arg))
    except (ValueError, TypeError, OverflowError):
        return 0  # Django's filter then does with it what it always does


def _padded(original):
    """ljust, rjust, center: the width asked for is the result's length (a negative one pads nothing)."""

    def padded(value, arg):
        try:
            width = int(arg)
        except (ValueError, TypeError, OverflowError):
            width = 0  # Django's filter raises as it always did
        current().make(max(width, 0))
        return original(value, arg)

    return padded


# A printf conversion's width and precision: what stringformat's argument asks each conversion to make.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")


def stringformat(value, arg):
    asked = [(_number(w or 0), _number(p or 0)) for w, p in _CONVERSION.findall("%" + str(arg))]
    try:
        value_chars = len(str(value)) if asked else 0
    except ValueError:  # an int too long to print: Django's filter gives ""
        value_chars = 0
    current().make(sum(max(w, p + value_chars) for w, p in asked))
    return defaultfilters.stringformat(value, arg)


def floatformat(text, arg=-1):
    # The argument is the number of decimal places (with Django's g and u suffixes).
    places = _number(arg.rstrip("gu") or 0) if isinstance(arg, str) else _number(arg)
    current().make(places)
    return defaultfilters.floatformat(text, arg)


def join(value, arg, autoescape=True):
    # The separator is repeated once between each two items.
    try:
        items = len(value)
    except TypeError:
        items = 0
    budget = current()
    budget.make(len(str(arg)) * max(items - 1, 0))
    result = defaultfilters.join(value, arg, autoescape=autoescape)
    budget.spend(_cost(result))
    return result


join.counts_its_result = True


_CHECKED = {
    "ljust": _padded(defaultfilters.ljust),
    "rjust": _padded(defaultfilters.rjust),
    "center": _padded(defaultfilters.center),
    "stringformat": stringformat,
    "floatformat": floatformat,
    "join": join,
}
# These hand back their value or their argument as it is: nothing is made, and rendering's fast path
# recognises `default` by identity (dbmail.content.rendering.PlainTemplate).
_AS_THEY_ARE = {"default", "default_if_none"}

for _name, _original in defaultfilters.register.filters.items():
    if _name in _CHECKED:
        _register(_name, _original, _CHECKED[_name])
    elif _name not in _AS_THEY_ARE:
        _register(_name, _original, _counted(_original))


# --- tags: loops count their iterations and output, lorem checks its count ---


def _body(nodelist):
    """(nodes, characters) of one pass over a loop's body: each node in it, and the most literal text it prints.

    A loop inside counts its own, each time it runs.
    """
    nodes = chars = 0
    for node in nodelist:
        nodes += 1
        if isinstance(node, TextNode):
            chars += len(node.s)
        elif isinstance(node, defaulttags.VerbatimNode):
            chars += len(node.content)
        if not isinstance(node, CountedForNode):
            for attr in node.child_nodelists:
                more_nodes, more_chars = _body(getattr(node, attr, None) or ())
                nodes += more_nodes
                chars += more_chars
    return nodes, chars


class _Sized:
    """A loop's sequence: counts, before the loop starts, its iterations and the literal text they will print.

    An iteration counts one for each node in the body. The body's variables and filters count what they
    make as they run; counting its text here, in one step, spares the loop any work per iteration.
    """

    def __init__(self, expression, nodelist=()):
        self.expression = expression
        nodes, self.chars = _body(nodelist)
        self.weight = max(nodes, 1)

    def resolve(self, context, ignore_failures=False):
        values = self.expression.resolve(context, ignore_failures=ignore_failures)
        if values is None:
            return values
        if not hasattr(values, "__len__"):
            values = list(values)
        budget = current()
        budget.repeat(len(values) * self.weight)
        budget.spend(len(values) * self.chars)
        return values

    def __str__(self):
        return str(self.expression)


class CountedForNode(defaulttags.ForNode):
    def render(self, context):
        # What the iterations print is counted as it is made (and its text up front): it cannot grow past the
        # budget's work on the way here.
        text = super().render(context)
        limit = (_current.get() or current()).limit
        if len(text) > limit:
            current().over(too_big(limit))
        return text


@register.tag("for")
def do_for(parser, token):
    node = defaulttags.do_for(parser, token)
    node.__class__ = CountedForNode
    node.sequence = _Sized(node.sequence, node.nodelist_loop)
    return node


class _CountedOutput:
    """Node classes whose output is a value of the context (or all of it): made to count it as variables do."""

    _classes = {}

    @classmethod
    def of(cls, node_class):
        if node_class not in cls._classes:

            def render(self, context):
                text = node_class.render(self, context)
                current().spend(len(text))
                return text

            cls._classes[node_class] = type(f"Counted{node_class.__name__}", (node_class,), {"render": render})
        return cls._classes[node_class]


def _counting(compile_function):
    def compile_counted(parser, token):
        node = compile_function(parser, token)
        node.__class__ = _CountedOutput.of(type(node))
        return node

    return compile_counted


# {% firstof big %} and {% cycle big big %} print a value as {{ big }} does.
for _name in ("firstof", "cycle"):
    register.tag(_name, _counting(defaulttags.register.tags[_name]))


class _SilentDebugNode(Node):
    def render(self, context):
        return ""


@register.tag
def debug(parser, token):
    """{% debug %} prints nothing in mail, as Django's does with DEBUG off.

    With DEBUG on (`make run`), Django's prints the whole context and every
    module the process loaded: to each recipient, and the preview would show
    what production never sends.
    """
    return _SilentDebugNode()


@register.tag
def regroup(parser, token):
    node = defaulttags.regroup(parser, token)
    node.target = _Sized(node.target)
    return node


class CountedLoremNode(defaulttags.LoremNode):
    # At most: Django's lorem words have 14 letters, a paragraph 4 sentences of 5 sections of 12 words.
    _CHARS = {"w": 15, "p": 4 * 5 * 12 * 16 + 9, "b": 4 * 5 * 12 * 16 + 2}

    def render(self, context):
        try:
            count = int(self.count.resolve(context))
        except (ValueError, TypeError):
            count = 1
        budget = current()
        budget.make(max(count, 0) * self._CHARS[self.method])
        text = super().render(context)
        budget.spend(len(text))
        return text


@register.tag
def lorem(parser, token):
    node = defaulttags.lorem(parser, token)
    node.__class__ = CountedLoremNode
    return node


class LimitedEngine(Engine):
    """An engine that loads no files and renders with this library over Django's builtins."""

    def __init__(self, **options):
        super().__init__(loaders=[], builtins=[__name__], **options)

    def from_string(self, template_code):
        return count_variables(super().from_string(template_code))
