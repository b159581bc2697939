"""Queue health for dbmail_status and the admin: depth, age, last runs, and stuck mail."""

import socket
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Min
from django.utils import timezone

from dbmail import states
from dbmail.models import CronHeartbeat, TextOfEmail


@dataclass
class Health:
    counts: dict
    oldest_due_age: timedelta | None
    last_success: object  # datetime or None
    stuck: bool
    reasons: list


def check(stuck_after):
    """Queue depth per status and whether mail is stuck longer than `stuck_after` (a timedelta)."""
    now = timezone.now()
    counts = dict(TextOfEmail.objects.values_list("status").annotate(n=Count("id")).order_by())
    oldest = TextOfEmail.objects.filter(status__in=states.WAITING, next_attempt_at__lte=now).aggregate(
        m=Min("next_attempt_at")
    )["m"]
    oldest_age = now - oldest if oldest else None
    stale_lease = TextOfEmail.objects.filter(
        status=states.EmailStatus.SENDING, leased_until__lte=now - stuck_after
    ).exists()
    last_success = (
        CronHeartbeat.objects.filter(command="dbmail_cron", last_success_at__isnull=False)
        .order_by("-last_success_at")
        .values_list("last_success_at", flat=True)
        .first()
    )
    reasons = []
    if oldest_age and oldest_age > stuck_after:
        reasons.append(f"an email has been due for {humane(oldest_age)}")
    if stale_lease:
        reasons.append("emails are held by a sender whose lease ran out long ago")
    waiting = sum(counts.get(s, 0) for s in states.WAITING)
    if waiting and (last_success is None or now - last_success > stuck_after):
        reasons.append(f"mail is waiting and dbmail_cron last succeeded {ago(last_success, now)}")
    return Health(counts, oldest_age, last_success, bool(reasons), reasons)


def beat(command, started_at, summary=None, error=""):
    """Record a run of `command` on this host: success when there is no error."""
    now = timezone.now()
    defaults = {"last_started_at": started_at, "last_summary": summary or {}, "last_error": error}
    if not error:
        defaults["last_success_at"] = now
    CronHeartbeat.objects.update_or_create(command=command, host=socket.gethostname(), defaults=defaults)


def humane(delta):
    """A duration as people say it: "12 seconds", "3 minutes", "2 hours 5 minutes", "4 days"."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return _plural(seconds, "second")
    if seconds < 3600:
        return _plural(seconds // 60, "minute")
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return _plural(hours, "hour") + (f" {_plural(minutes, 'minute')}" if minutes else "")
    return _plural(seconds // 86400, "day")


def ago(moment, now=None):
    """ "3 minutes ago", or "never" for None."""
    if moment is None:
        return "never"
    delta = (now or timezone.now()) - moment
    if delta.total_seconds() < 0:
        return "in " + humane(-delta)  # another host's clock runs ahead
    return humane(delta) + " ago"


def _plural(n, unit):
    return f"{n} {unit}{'s' * (n != 1)}"
