"""The registry of list resolvers: a name an EmailList stores -> the function that finds its members.

Only the registry lives here, so the models can check a list's resolver name
without importing the routing logic that calls resolvers
(mailgate.gate.routing, which also registers the built-in ones and re-exports
`list_resolver` for sites).
"""

from dataclasses import dataclass

_RESOLVERS = {}


@dataclass(frozen=True)
class Resolver:
    name: str
    label: str
    func: object


def list_resolver(name, *, label=None):
    """Register a resolver under `name` (decorator)."""

    def register(func):
        _RESOLVERS[name] = Resolver(name, label or name.replace("_", " ").capitalize(), func)
        return func

    return register


def registered_resolvers():
    return dict(_RESOLVERS)


def get(name):
    """The Resolver registered under `name`, or None."""
    return _RESOLVERS.get(name)
