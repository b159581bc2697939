"""Small helpers for the comm panel templates."""

from django import template

from dbmail.content import addresses

register = template.Library()


@register.simple_tag(takes_context=True)
def query_with(context, **changes):
    """The current query string with some parameters replaced (pagination keeps the filters)."""
    params = context["request"].GET.copy()
    for key, value in changes.items():
        if value in (None, ""):
            params.pop(key, None)
        else:
            params[key] = value
    return "?" + params.urlencode() if params else "?"


@register.filter
def get(mapping, key):
    """mapping[key] in a template (dict keys that are variables); None when absent."""
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.filter
def measure(name):
    """A dashboard measure's name as a heading ("hard_bounced" -> "Hard bounced")."""
    return str(name).replace("_", " ").capitalize()


@register.filter
def readable_address(address):
    """An address with its IDN domain in letters (ann@bücher.example), as stored it is in A-labels."""
    return addresses.readable(address)
