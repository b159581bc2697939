"""Several sites on one installation: the commands' --sid (seed 003's `smailer --sid=database`).

A site is a database alias in DATABASES: "default" (DATABASE_URL), or <sid>
for each DATABASE_URL_<SID> setting. Each site has its own outbox and, through
"{sid}" in DBMAIL_SPOOL_DIR, its own spool directory.

use(sid) makes the chosen database this process's default connection, before
anything touches the database: the outbox code then runs unchanged (its
transactions and row locks are all on the default connection). It is meant
for one-site command processes; call it once, at the start.
"""

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

from dbmail.exceptions import UnknownSite

_current = DEFAULT_DB_ALIAS


def use(sid):
    """Run the rest of this process against site `sid` (None or "default": DATABASE_URL)."""
    global _current
    sid = sid or DEFAULT_DB_ALIAS
    if sid not in settings.DATABASES:
        known = ", ".join(sorted(settings.DATABASES))
        raise UnknownSite(
            f"unknown site {sid!r}: the configured sites are {known} "
            f"(add one with the setting DATABASE_URL_{sid.upper()})"
        )
    if sid != DEFAULT_DB_ALIAS:
        connections[DEFAULT_DB_ALIAS].close()
        connections.settings[DEFAULT_DB_ALIAS] = connections.settings[sid]
        try:
            del connections[DEFAULT_DB_ALIAS]  # the next use opens a connection with the new settings
        except AttributeError:
            pass  # no connection was made yet
    _current = sid


def current():
    """The site this process works for."""
    return _current
