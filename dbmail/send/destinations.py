"""Destination groups: which mail provider a recipient's domain belongs to, and that provider's limits.

Mail to one provider is paced as one (dbmail.send.pacing): its rate and the
number of senders talking to it at once are shared by every host through the
database. A group is a name, the domain patterns of its mailboxes, a rate per
minute and a number of parallel connections (0: no limit). The built-in
groups below can be changed, removed or joined by others with the setting
DBMAIL_DESTINATION_GROUPS, a JSON object read at start-up:

    {"gmail": {"rate_per_minute": 300},                  # change one figure of a built-in group
     "yahoo": null,                                      # remove a built-in group
     "club": {"domains": ["club.example", "*.club.example"], "rate_per_minute": 60, "max_connections": 2},
     "default": {"rate_per_minute": 0}}                  # the rest: every domain no group names

A domain pattern is a domain (gmail.com), a first label with any suffix of one
or two labels (hotmail.* covers hotmail.com and hotmail.co.uk), or every
subdomain of a domain (*.club.example). The group is worked out when an
email is made and stored on it (TextOfEmail.dest_group), so a claim can pass
over a group that must wait without reading its rows; rows made before (or
by a path that leaves it empty) are classified when they are claimed.

Why the groups are settings: they change about as often as the mail server
does and belong with its settings; a typo stops start-up naming the setting
instead of slowing mail at 3 a.m.; and the state that must be shared
(budgets, slots, back-off) is in the database either way, where the comm
panel and dbmail_status show it. Every host must have the same groups. A
group's two figures can also be changed (or switched off) in the admin, for
every host without a restart: dbmail.send.limits lays those over these.

This module imports nothing of Django's models: dbmail.conf uses it to check the setting.
"""

import re
from dataclasses import dataclass

from dbmail.exceptions import DestinationGroupsError as GroupsError

DEFAULT = "default"  # the group of every domain no other group names
ALL = "*"  # the budget of all mail together (DBMAIL_THROTTLE_PER_SECOND), never a group's name

BUILT_IN = {
    "gmail": {"domains": ["gmail.com", "googlemail.com"], "rate_per_minute": 600, "max_connections": 10},
    "microsoft": {
        "domains": ["outlook.com", "hotmail.*", "live.*", "msn.com"],
        "rate_per_minute": 300,
        "max_connections": 5,
    },
    "yahoo": {"domains": ["yahoo.*", "aol.*"], "rate_per_minute": 300, "max_connections": 5},
    DEFAULT: {"domains": [], "rate_per_minute": 0, "max_connections": 0},
}
KEYS = ("domains", "rate_per_minute", "max_connections")

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_ANY_SUFFIX = re.compile(rf"({_LABEL})\.\*")
_SUBDOMAINS = re.compile(rf"\*\.({_LABEL}(?:\.{_LABEL})+)")


@dataclass(frozen=True)
class Group:
    name: str
    domains: tuple = ()
    rate_per_minute: float = 0.0  # 0: no limit of its own
    max_connections: int = 0  # 0: any number of senders at once

    @property
    def paced(self):
        return self.rate_per_minute > 0


class Groups:
    """The groups in force, and the group of any address (a few dictionary lookups)."""

    def __init__(self, groups):
        self.by_name = dict(groups)
        self.default = self.by_name[DEFAULT]
        self._exact, self._any_suffix, self._subdomains = {}, {}, {}
        for group in self.by_name.values():
            for pattern in group.domains:
                if match := _ANY_SUFFIX.fullmatch(pattern):
                    self._any_suffix.setdefault(match[1], group.name)
                elif match := _SUBDOMAINS.fullmatch(pattern):
                    self._subdomains.setdefault(match[1], group.name)
                else:
                    self._exact.setdefault(pattern, group.name)
        self._seen = {}

    def __getitem__(self, name):
        """A group by name; a name no longer configured (a row made before a change) is the default group."""
        return self.by_name.get(name) or self.default

    def __iter__(self):
        return iter(self.by_name.values())

    def of(self, address):
        """The name of the group of `address`'s domain."""
        domain = address.rpartition("@")[2].lower()
        name = self._seen.get(domain)
        if name is None:
            name = self._classify(domain)
            if len(self._seen) < 50_000:  # a newsletter has a few thousand domains; memory stays bounded
                self._seen[domain] = name
        return name

    def _classify(self, domain):
        if domain in self._exact:
            return self._exact[domain]
        first, _, rest = domain.partition(".")
        if first in self._any_suffix and rest and rest.count(".") <= 1:  # one or two labels after it
            return self._any_suffix[first]
        parent = rest
        while parent.count(".") >= 1:
            if parent in self._subdomains:
                return self._subdomains[parent]
            parent = parent.partition(".")[2]
        return DEFAULT


def parse(value):
    """The Groups for a DBMAIL_DESTINATION_GROUPS value (a dict) over the built-in ones; GroupsError if unusable."""
    if not isinstance(value, dict):
        raise GroupsError(f"must be a JSON object of groups, not {type(value).__name__}")
    merged = {name: dict(spec) for name, spec in BUILT_IN.items()}
    for name, spec in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise GroupsError(f"{name!r} is not a group name (lower-case letters, digits, . _ -; at most 40)")
        if spec is None:
            if name == DEFAULT:
                raise GroupsError(f"the {DEFAULT!r} group (every other domain) cannot be removed")
            merged.pop(name, None)
            continue
        if not isinstance(spec, dict):
            raise GroupsError(f"group {name!r} must be an object with {', '.join(KEYS)}, or null to remove it")
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise GroupsError(f"group {name!r}: unknown key {unknown[0]!r} (the keys are {', '.join(KEYS)})")
        merged[name] = {**merged.get(name, {"domains": [], "rate_per_minute": 0, "max_connections": 0}), **spec}
    groups, owner = {}, {}
    for name, spec in merged.items():
        groups[name] = _group(name, spec)
        if name == DEFAULT and groups[name].domains:
            raise GroupsError(f"the {DEFAULT!r} group takes every domain no other group names: it lists none")
        for pattern in groups[name].domains:
            if pattern in owner:
                raise GroupsError(f"{pattern!r} is in two groups, {owner[pattern]!r} and {name!r}")
            owner[pattern] = name
    return Groups(groups)


def _group(name, spec):
    domains = spec.get("domains")
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise GroupsError(f"group {name!r}: domains must be a list of domain patterns")
    cleaned = tuple(d.strip().lower() for d in domains)
    for pattern in cleaned:
        if not (_DOMAIN.fullmatch(pattern) or _ANY_SUFFIX.fullmatch(pattern) or _SUBDOMAINS.fullmatch(pattern)):
            raise GroupsError(f"group {name!r}: {pattern!r} is not a domain, a label.* or a *.domain pattern")
    rate = spec.get("rate_per_minute")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
        raise GroupsError(f"group {name!r}: rate_per_minute must be a number, 0 or more (0: no limit)")
    connections = spec.get("max_connections")
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 0:
        raise GroupsError(f"group {name!r}: max_connections must be a whole number, 0 or more (0: no limit)")
    return Group(name, cleaned, float(rate), connections)


def problem(value):
    """For dbmail.conf's check: "" or the rest of the sentence after "Setting DBMAIL_DESTINATION_GROUPS"."""
    try:
        parse(value)
    except GroupsError as exc:
        return f": {exc}"
    return ""


_cache = (None, None)  # (the setting's value, its Groups)


def current():
    """The groups of the live settings (parsed again when the setting is given another value)."""
    global _cache
    from dbmail.conf import settings as conf

    value = conf.DBMAIL_DESTINATION_GROUPS
    seen, groups = _cache
    if groups is None or (value is not seen and value != seen):
        groups = parse(value)
        _cache = (value, groups)
    return groups


def group_of(address):
    """The name of the destination group of `address` under the live settings."""
    return current().of(address)
