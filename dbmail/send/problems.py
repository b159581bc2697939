"""Sending problems: the last server or sender failure of each account's server, kept for dbmail_status.

A run writes one row per account and server whose failures (not any
recipient's) deferred mail, and marks the row resolved when a later run
sends through that account and server without such a failure.
"""

from django.db import transaction
from django.utils import timezone

from dbmail.models import SendingProblem


def key(account, server_label):
    return f"{account.pk if account else '-'}|{server_label}"[:600]


def settle(routes, resolve=True):
    """Record the routes (dbmail.send.loop._Route) that deferred mail; resolve the ones that worked."""
    now = timezone.now()
    routes = list(routes)
    for route in routes:
        if not route.deferred:
            continue
        fault = route.down or route.last_fault
        with transaction.atomic():
            problem, created = SendingProblem.objects.select_for_update().get_or_create(
                key=key(route.account, route.server.label),
                defaults={"account": route.account, "server": route.server.label[:300], "text": fault.text},
            )
            if not created and problem.resolved_at is not None:
                problem.first_seen_at = now  # failing again after it was fine
            problem.stage = fault.stage
            problem.smtp_code = fault.code
            problem.text = fault.text
            problem.emails_deferred = route.deferred
            problem.last_seen_at = now
            problem.resolved_at = None
            problem.save()
    working = [key(r.account, r.server.label) for r in routes if r.sent and not r.deferred]
    if resolve and working:
        SendingProblem.objects.filter(key__in=working, resolved_at__isnull=True).update(resolved_at=now)


def current():
    """Unresolved problems, the latest first."""
    return list(SendingProblem.objects.filter(resolved_at__isnull=True).select_related("account"))
