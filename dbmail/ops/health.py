"""Queue health for dbmail_status and the admin: depth, age, last runs, and stuck mail."""

import socket
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, Min, Q
from django.utils import timezone

from dbmail import states
from dbmail.models import CronHeartbeat, SendingProblem, TextOfEmail


@dataclass
class Health:
    counts: dict
    oldest_due_age: timedelta | None
    last_success: object  # datetime or None
    stuck: bool
    reasons: list
    possibly_delivered: int = 0  # emails with an attempt whose answer was lost (a possible duplicate)
    problems: list = field(default_factory=list)  # unresolved SendingProblem rows, the latest first


def check(stuck_after):
    """Queue depth per status and whether mail is stuck longer than `stuck_after` (a timedelta)."""
    now = timezone.now()
    per_status = (
        TextOfEmail.objects.values_list("status")
        .annotate(n=Count("id"), unknown=Count("id", filter=Q(possibly_delivered__gt=0)))
        .order_by()
    )
    counts, possibly_delivered = {}, 0
    for status, n, unknown in per_status:  # one scan for both
        counts[status] = n
        possibly_delivered += unknown
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
        reasons.append(f"an email has been due for {_human(oldest_age)}")
    if stale_lease:
        reasons.append("emails are held by a sender whose lease ran out long ago")
    waiting = sum(counts.get(s, 0) for s in states.WAITING)
    if waiting and (last_success is None or now - last_success > stuck_after):
        seen = _human(now - last_success) + " ago" if last_success else "never"
        reasons.append(f"mail is waiting and dbmail_cron last succeeded {seen}")
    problems = list(SendingProblem.objects.filter(resolved_at__isnull=True).select_related("account"))
    return Health(counts, oldest_age, last_success, bool(reasons), reasons, possibly_delivered, problems)


def beat(command, started_at, summary=None, error=""):
    """Record a run of `command` on this host: success when there is no error."""
    now = timezone.now()
    defaults = {"last_started_at": started_at, "last_summary": summary or {}, "last_error": error}
    if not error:
        defaults["last_success_at"] = now
    CronHeartbeat.objects.update_or_create(command=command, host=socket.gethostname(), defaults=defaults)


def _human(delta):
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
