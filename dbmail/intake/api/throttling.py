"""DBMAIL_API_SEND_RATE: how many sending calls one user may make to the API per window.

DRF's own throttles keep their history in Django's cache, which by default is
each process's memory: four workers on two hosts would allow eight times the
rate. The count lives in the database instead (ApiRateCounter), one row per
user, moved on with one atomic upsert, so every process and host counts
against the same number. Windows are fixed (12:00:00-12:00:59 for a minute),
which lets a client spend one window's allowance at its end and the next at
its start; the rate is a guard against runaway scripts, not a meter.

DRF's tokens are one per user, so "per token" and "per user" are the same
count; a signed-in session counts with its user's token.

DBMAIL_API_LOGIN_RATE bounds the same way the password checks of POST
/api/v1/token/ per username (every attempt, right or wrong: a client asks for
its token once), so a password cannot be guessed there at the speed of the
web workers. Per username rather than per client address: behind a proxy
every client has the proxy's.
"""

import hashlib
import math
import time

from django.db import connection
from rest_framework.throttling import BaseThrottle

from dbmail.conf import settings as conf
from dbmail.models import ApiRateCounter

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate):
    """'120/min' -> (120, 60); 'off' -> None. The setting was checked at start-up."""
    if rate == "off":
        return None
    number, _, period = rate.replace(" ", "").partition("/")
    return int(number), _PERIODS[period[0]]


def hit(ident, seconds, now=None):
    """Count one call for `ident` in the current window of `seconds`; returns (calls in it, window number)."""
    now = time.time() if now is None else now
    window = int(now // seconds)
    table = connection.ops.quote_name(ApiRateCounter._meta.db_table)
    # One statement, atomic on PostgreSQL and SQLite alike: a new window starts again from 1.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (ident, slot, hits) VALUES (%s, %s, 1) "
            f"ON CONFLICT (ident) DO UPDATE SET "
            f"hits = CASE WHEN {table}.slot = excluded.slot THEN {table}.hits + 1 ELSE 1 END, "
            f"slot = excluded.slot RETURNING hits",
            [ident, window],
        )
        (hits,) = cursor.fetchone()
    return hits, window


class _WindowThrottle(BaseThrottle):
    """A fixed-window limit from a rate setting, counted by hit(); subclasses say what one call counts as."""

    def __init__(self):
        self.wait_seconds = None

    def rate(self):
        raise NotImplementedError

    def ident(self, request):
        """The counter's name for this call, or None when it is not counted."""
        raise NotImplementedError

    def allow_request(self, request, view):
        limit = parse_rate(self.rate())
        ident = self.ident(request) if limit is not None else None
        if ident is None:
            return True
        number, seconds = limit
        now = time.time()
        hits, window = hit(ident, seconds, now)
        if hits <= number:
            return True
        self.wait_seconds = max(1, math.ceil((window + 1) * seconds - now))
        return False

    def wait(self):
        return self.wait_seconds


class SendRateThrottle(_WindowThrottle):
    """Counts the calls that send (creating a request, queueing a draft, POST /send/) per user."""

    def rate(self):
        return conf.DBMAIL_API_SEND_RATE

    def ident(self, request):
        # The permission check answers the anonymous.
        return f"send:user:{request.user.pk}" if request.user.is_authenticated else None


class LoginRateThrottle(_WindowThrottle):
    """Counts the attempts to obtain a token (a password check) per username given."""

    def rate(self):
        return conf.DBMAIL_API_LOGIN_RATE

    def ident(self, request):
        username = request.data.get("username") if hasattr(request.data, "get") else None
        if request.method != "POST" or not isinstance(username, str):
            return None  # nothing to check a password against: the view answers 400
        # Hashed: a username may be longer than the counter's ident, and is folded as logins are looked up.
        key = hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()[:40]
        return f"login:{key}"
