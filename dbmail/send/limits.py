"""The destination groups in force: the settings' groups, with the figures an admin changed over them.

dbmail.send.destinations parses the groups from the settings (names, domains,
rate, connections) and classifies addresses; it reads no database, so that a
bad setting stops start-up. An admin may change a group's rate or number of
connections, or switch either off, in the admin (DestinationLimit rows); the
senders (dbmail.send.pacing) take the groups from here. The rows are read at
most every DestinationLimit.REFRESH_SECONDS per process, so an ad-hoc send
costs no query for them, and a change reaches every host within seconds.
"""

import dataclasses
import threading
import time

from dbmail.models import DestinationLimit
from dbmail.send import destinations

_lock = threading.Lock()
_cache = {"read_at": None, "rows": {}}


def overrides():
    """{group: (rate per minute or None, max connections or None)} of the admin's rows, read now and then."""
    now = time.monotonic()
    with _lock:
        if _cache["read_at"] is not None and now - _cache["read_at"] < DestinationLimit.REFRESH_SECONDS:
            return _cache["rows"]
    rows = {r.group: (r.rate_per_minute, r.max_connections) for r in DestinationLimit.objects.all()}
    with _lock:
        _cache.update(read_at=now, rows=rows)
    return rows


def forget():
    """Read the rows again at the next call (after a change in the admin, in this process)."""
    with _lock:
        _cache["read_at"] = None


def apply(groups, changes):
    """`groups` (destinations.Groups) with `changes` ({group: (rate, connections)}, None: unchanged) over them.

    A row for a group the settings no longer have changes nothing.
    """
    if not any(name in groups.by_name for name in changes):
        return groups
    changed = {}
    for name, group in groups.by_name.items():
        rate, connections = changes.get(name, (None, None))
        changed[name] = dataclasses.replace(
            group,
            rate_per_minute=group.rate_per_minute if rate is None else float(rate),
            max_connections=group.max_connections if connections is None else int(connections),
        )
    return destinations.Groups(changed)


def in_force():
    """The groups a sender applies now."""
    return apply(destinations.current(), overrides())
