"""Variables a request's templates use that nothing fills: warned of, never refused, with the closest known name.

A misspelt `{{ frist_name }}` renders as nothing, silently. The names a recipient's mail
is rendered with are the recipient's (dbmail.content.rendering.RECIPIENT_VARIABLES), the
site's (SITE_VARIABLES), the request's own `context` keys, and, for a CSV or API rows, the
rows' columns. Any other name the templates read is reported, with the closest known name by
difflib. Names the template binds itself ({% for x in ... %}, {% with x=... %}, `forloop`,
{% regroup ... as x %}, {% cycle ... as x %}) are not unknown inside it.

The templates are parsed, not rendered, by an engine like rendering's (no loaders); one that
does not compile has no warnings here: its error is the template check's to give.
"""

import difflib
from dataclasses import dataclass

from django.template import Engine, TemplateSyntaxError
from django.template.base import FilterExpression, Variable, VariableNode
from django.template.defaulttags import CycleNode, ForNode, IfNode, RegroupNode, WithNode

from dbmail.content import rendering

_ENGINE = Engine(loaders=[])
# Names Django itself gives a template's context.
_BUILTINS = frozenset({"True", "False", "None"})


@dataclass(frozen=True)
class Unknown:
    name: str
    suggestion: str  # the closest known name, or ""

    def __str__(self):
        text = f"{{{{ {self.name} }}}} is not a known variable"
        return f"{text}: did you mean {self.suggestion}?" if self.suggestion else f"{text}: it will be empty."


def known_names(context=None, columns=()):
    """Every name a recipient's mail is rendered with, in the order the panel lists them."""
    names = [*rendering.RECIPIENT_VARIABLES, *rendering.SITE_VARIABLES]
    extra = list(context) if isinstance(context, dict) else []
    extra += list(columns or ())
    names += [n for n in extra if isinstance(n, str) and n not in names]
    return names


def columns_of(recipient_set, params):
    """The per-recipient columns a request's rows give (CSV, pasted or API rows), else ()."""
    if recipient_set == "addresses" and isinstance(params, dict) and isinstance(params.get("columns"), list):
        return tuple(c for c in params["columns"] if isinstance(c, str))
    return ()


def unknown(sources, known):
    """An Unknown for each name the templates in `sources` read and `known` lacks, in order of first use."""
    known = list(known)
    found = []
    for source in sources:
        if not source or "{" not in source:
            continue
        try:
            nodelist = _ENGINE.from_string(source).nodelist
        except TemplateSyntaxError:
            continue
        for name in _walk(nodelist, set(_BUILTINS)):
            if name not in known and name not in found:
                found.append(name)
    return [Unknown(name, _closest(name, known)) for name in found]


def warnings_for(mail, columns=None):
    """The warnings, as sentences, for a MessageRequest (saved or not) or anything with its template fields."""
    if columns is None:
        columns = columns_of(getattr(mail, "recipient_set", ""), getattr(mail, "recipient_params", None))
    known = known_names(getattr(mail, "context", None), columns)
    sources = (mail.subject, mail.text_body, mail.html_body)
    return [str(u) for u in unknown(sources, known)]


def _closest(name, known):
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return match[0] if match else ""


def _walk(nodelist, bound):
    """The unbound names read in `nodelist`, in order (duplicates included); `bound` are names in scope."""
    bound = set(bound)  # a {% regroup %} or {% cycle ... as %} binds for the rest of its own block
    for node in nodelist:
        if isinstance(node, VariableNode):
            yield from _names(node.filter_expression, bound)
        elif isinstance(node, ForNode):
            yield from _names(node.sequence, bound)
            yield from _walk(node.nodelist_loop, bound | set(node.loopvars) | {"forloop"})
            yield from _walk(node.nodelist_empty, bound)
        elif isinstance(node, WithNode):
            for expression in node.extra_context.values():
                yield from _names(expression, bound)
            yield from _walk(node.nodelist, bound | set(node.extra_context))
        elif isinstance(node, IfNode):
            for condition, body in node.conditions_nodelists:
                if condition is not None:
                    yield from _condition(condition, bound)
                yield from _walk(body, bound)
        elif isinstance(node, RegroupNode):
            yield from _names(node.target, bound)
            bound.add(node.var_name)
        else:
            for value in vars(node).values():
                yield from _expressions(value, bound)
            if isinstance(node, CycleNode) and node.variable_name:
                bound.add(node.variable_name)
            for attr in getattr(node, "child_nodelists", ()):
                yield from _walk(getattr(node, attr, None) or [], bound)


def _expressions(value, bound):
    """The names in whatever FilterExpressions a tag keeps (a list of them, a dict of them, or one)."""
    if isinstance(value, FilterExpression):
        yield from _names(value, bound)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, FilterExpression):
                yield from _names(item, bound)
    elif isinstance(value, dict):
        for item in value.values():
            if isinstance(item, FilterExpression):
                yield from _names(item, bound)


def _condition(condition, bound):
    """An {% if %} condition's names: its literals' expressions, through its operators (first, second)."""
    expression = getattr(condition, "value", None)
    if isinstance(expression, FilterExpression):
        yield from _names(expression, bound)
    for part in (getattr(condition, "first", None), getattr(condition, "second", None)):
        if part is not None:
            yield from _condition(part, bound)


def _names(expression, bound):
    for variable in [expression.var] + [arg for _, args in expression.filters for lookup, arg in args if lookup]:
        if isinstance(variable, Variable) and variable.lookups:
            name = variable.lookups[0]
            if name not in bound:
                yield name
