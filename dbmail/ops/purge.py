"""Removing old finished emails and their log, keeping each request's totals."""

import argparse
import re
from collections import Counter, defaultdict
from datetime import timedelta

from django.db import connection, models, transaction
from django.db.models import signals
from django.utils import timezone

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.models import DeliveryEvent, MessageRequest, TextOfEmail

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}


def parse_duration(text):
    """'7d', '12h', '30m', '90s', '2w' (a bare number is days) -> timedelta."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a duration like 7d, 12h, 30m or 90s")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def duration_argument(text):
    """parse_duration for argparse: a bad value becomes a usage error naming the option."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def purge(older_than, chunk=2000):
    """Delete finished emails whose status has not changed for `older_than`; return how many."""
    cutoff = timezone.now() - older_than
    old = TextOfEmail.objects.filter(status__in=states.FINAL, status_changed_at__lt=cutoff)
    removed, last = 0, 0
    plan = _fast_plan() if connection.vendor == "postgresql" else None
    while True:
        with transaction.atomic():
            # Each chunk starts past the last one: the index entries of rows just deleted stay until
            # vacuum, and walking them again every chunk would make a long purge quadratic.
            # Locked as they are read: an email moved meanwhile (an admin's retry makes a dropped one queued
            # again, a bounce report makes a sent one bounced) is read as it is once its mover commits, so a
            # queued email is never deleted and each is counted in the status it is deleted in.
            chosen = old.filter(pk__gt=last).order_by("pk").select_for_update(of=("self",))
            rows = list(chosen.values_list("pk", "request_id", "status")[:chunk])
            if not rows:
                return removed
            last = rows[-1][0]
            per_request = defaultdict(Counter)
            for _, request_id, status in rows:
                if request_id:
                    per_request[request_id][status] += 1
            for request in MessageRequest.objects.select_for_update().filter(pk__in=per_request):
                counts = Counter(request.purged_counts or {})
                counts.update(per_request[request.pk])
                request.purged_counts = dict(counts)
                request.save(update_fields=["purged_counts"])
            ids = [pk for pk, _, _ in rows]
            _delete_emails(ids, plan)
            removed += len(ids)


def _delete_emails(ids, plan):
    """Delete the emails `ids` and what depends on them, as the ORM's delete() would.

    On PostgreSQL, when nothing listens to their deletion (`plan`: _fast_plan()), with one
    statement per table and the ids as one array, as Django itself does for a "fast delete":
    the ORM's delete() would load every email as a model instance first, about 10,000 a second.

    The emails go first, their log after: the log's email has no database constraint (migration
    0021), and a log row written while the delete waited for an email's row lock (dbmail_track
    locks the emails it records for) is then seen and deleted too, instead of naming nothing.
    The other tables' constraints are checked at the commit, whatever the order.
    """
    if plan is None:
        TextOfEmail.objects.filter(pk__in=ids).delete()
        DeliveryEvent.objects.filter(email_id__in=ids).delete()
        return
    with connection.cursor() as cursor:
        for sql in plan:
            cursor.execute(sql, [ids])


def _fast_plan():
    """The statements deleting emails (%s: their ids) and their dependents, or None when the ORM must do it.

    What Django's delete() would do for each relation to an email: delete the rows of a CASCADE
    (when they have no dependents of their own) and of a many-to-many table, set a SET_NULL to
    NULL, leave a DO_NOTHING. Anything else (PROTECT, a cascade going further, a signal
    receiver) is left to the ORM.
    """
    quote = connection.ops.quote_name
    plan = [f"DELETE FROM {quote(TextOfEmail._meta.db_table)} WHERE id = ANY(%s)"]  # first: see _delete_emails
    for model in (TextOfEmail, *(rel.related_model for rel in TextOfEmail._meta.related_objects)):
        if any(signal.has_listeners(model) for signal in (signals.pre_delete, signals.post_delete)):
            return None
    for rel in TextOfEmail._meta.related_objects:
        if rel.many_to_many:
            through = rel.through._meta
            column = next(f.column for f in through.fields if f.is_relation and f.related_model is TextOfEmail)
            plan.append(f"DELETE FROM {quote(through.db_table)} WHERE {quote(column)} = ANY(%s)")
            continue
        table, column = quote(rel.related_model._meta.db_table), quote(rel.field.column)
        if rel.on_delete is models.CASCADE and not rel.related_model._meta.related_objects:
            plan.append(f"DELETE FROM {table} WHERE {column} = ANY(%s)")
        elif rel.on_delete is models.SET_NULL:
            plan.append(f"UPDATE {table} SET {column} = NULL WHERE {column} = ANY(%s)")
        elif rel.on_delete is not models.DO_NOTHING:
            return None
    return plan


def purge_tracking(older_than):
    """Delete tracking bookkeeping older than `older_than`; return how many rows went.

    Applied event keys make a redelivered event harmless; no queue redelivers
    anything days later, so old keys only take space. Replay-guard signatures
    are useless once older than the signature window itself.
    """

    from dbmail.models import AppliedTrackingEvent, UnmatchedTrackingEvent, WebhookSignature

    now = timezone.now()
    cutoff = now - older_than
    removed = AppliedTrackingEvent.objects.filter(applied_at__lt=cutoff).delete()[0]
    removed += UnmatchedTrackingEvent.objects.filter(received_at__lt=cutoff).delete()[0]
    window = timedelta(seconds=2 * conf.TRACKING_WEBHOOK_MAX_AGE)
    removed += WebhookSignature.objects.filter(seen_at__lt=now - window).delete()[0]
    return removed


def purge_api_sends(older_than):
    """Delete the sending API's idempotency keys older than `older_than` (their emails are kept); return how many.

    A key guards against a client retrying the same email, which happens
    within minutes; kept as long as the emails' log, it can still answer a
    late retry with the email it made.
    """
    from dbmail.models import ApiSend

    return ApiSend.objects.filter(created_at__lt=timezone.now() - older_than).delete()[0]


PENDING_UPLOAD_DAYS = 1


def purge_pending_uploads(now=None):
    """Delete the files kept from failed compose saves once a day old (a try nobody came back to); how many."""
    from dbmail.models import PendingUpload

    cutoff = (now or timezone.now()) - timedelta(days=PENDING_UPLOAD_DAYS)
    removed = 0
    for kept in PendingUpload.objects.filter(created_at__lt=cutoff).iterator():
        kept.file.delete(save=False)
        kept.delete()
        removed += 1
    return removed
