"""Applying tracking events: one precedence table, one transaction per batch, nothing applied twice.

The dbmail_track job (dbmail.track.consume) hands each batch read off the
tracking queue to apply_batch(). Each payload becomes a TrackingEvent again
(dbmail.track.events); an event moves its email along dbmail.states'
tracking transitions only, is appended to the email's log, and may suppress
the address. A bounce's kind is recorded too: an email reported hard-bounced
is counted once as such in the roll-up (dbmail.rollup's "hard_bounced"),
the figure the reputation guard judges; a soft bounce the MTA gave up on
counts as bounced only. Event keys are remembered, so a redelivered batch changes
nothing; events for no email of ours, and events that cannot be read, are
kept as UnmatchedTrackingEvent rows.
"""

import hashlib
import json
from dataclasses import dataclass, fields

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from dbmail import rollup, states
from dbmail.content.addresses import mailbox_key
from dbmail.models import (
    HARD_BOUNCED,
    AppliedTrackingEvent,
    DeliveryEvent,
    Suppression,
    TextOfEmail,
    UnmatchedTrackingEvent,
)
from dbmail.track import guard
from dbmail.track.events import BounceType, EventType, InvalidEvent, TrackingEvent, smtp_code
from dbmail.track.header import email_pk_from_tracking_id
from dbmail.track.mta_ids import message_id_for_queue_id

# The transition each event leads to; dbmail.states ranks the states, so that final states
# win and the order in which events arrive does not change where an email ends up.
EVENT_TRANSITION = {
    EventType.DEFERRED: states.TRACKED_SENT,
    EventType.REJECTED: states.TRACKED_DROPPED,
    EventType.DELIVERED: states.TRACKED_DELIVERED,
    EventType.OPENED: states.TRACKED_DELIVERED,
    EventType.BOUNCED: states.TRACKED_BOUNCED,
    EventType.COMPLAINED: states.TRACKED_COMPLAINED,
}


def next_status(current, event):
    """The status an email in `current` has after `event`: its transition's target, if it outranks `current`."""
    transition = EVENT_TRANSITION[event]
    return transition.target if current in transition.sources else current


# --- Applying a batch ---


@dataclass
class ApplyResult:
    applied: int = 0  # new events for an email of ours
    changed: int = 0  # of those, how many moved an email's status
    duplicates: int = 0
    unmatched: int = 0
    invalid: int = 0
    paused: int = 0  # requests the reputation guard paused (dbmail.track.guard)

    def __iadd__(self, other):
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self):
        paused = f", paused {self.paused} request{'s' * (self.paused != 1)} (reputation guard)" if self.paused else ""
        return (
            f"applied {self.applied} ({self.changed} changed a status), duplicates {self.duplicates}, "
            f"unmatched {self.unmatched}, invalid {self.invalid}{paused}"
        )


def apply_batch(payloads, now=None):
    """Apply events in one transaction: TrackingEvents, or the JSON read off the queue (whatever it is)."""
    now = now or timezone.now()
    result = ApplyResult()
    items = [_prepare(payload) for payload in payloads]
    with transaction.atomic():
        fresh = _only_new(items, now, result)
        unmatched = [
            _unmatched(key, None, payload, UnmatchedTrackingEvent.Reason.INVALID, error)
            for key, event, payload, error in fresh
            if event is None
        ]
        result.invalid = len(unmatched)
        events = sorted((item for item in fresh if item[1] is not None), key=lambda item: item[1].timestamp)
        by_queue_id = _resolve_queue_ids([event for _, event, _, _ in events])
        by_pk, by_message_id = _lock_emails([event for _, event, _, _ in events], by_queue_id.values())
        changed, log_rows, suppress = {}, [], {}
        before, hard = {}, {}  # pk -> status before this batch; pk -> email reported hard-bounced in it
        for key, event, payload, _ in events:
            email = (
                by_pk.get(email_pk_from_tracking_id(event.tracking_id))
                or by_message_id.get(event.message_id)
                or by_message_id.get(by_queue_id.get(event.queue_id))
            )
            if email is None:
                only_queue_id = event.queue_id and not (event.message_id or event.tracking_id)
                why = f"no email of ours got the MTA's queue id {event.queue_id!r}" if only_queue_id else ""
                unmatched.append(_unmatched(key, event, payload, UnmatchedTrackingEvent.Reason.UNKNOWN_EMAIL, why))
                continue
            result.applied += 1
            before.setdefault(email.pk, email.status)
            status = next_status(email.status, event.event)
            if status != email.status:
                email.status = status
                if status in states.KEEPS_DIAGNOSTIC:
                    email.last_error = event.diagnostic or event.event
                changed[email.pk] = email
            log_rows.append(_log_row(email, event))
            if event.event == EventType.COMPLAINED:
                suppress[mailbox_key(email.to_address)] = (Suppression.Reason.COMPLAINED, event)
            elif event.event == EventType.BOUNCED and event.bounce_type == BounceType.HARD:
                suppress.setdefault(mailbox_key(email.to_address), (Suppression.Reason.BOUNCED, event))
                hard[email.pk] = email
        result.changed = len(changed)
        result.unmatched = len(unmatched) - result.invalid
        hard = _first_hard_bounces(hard, before)
        _write(changed.values(), log_rows, unmatched, suppress, now, hard.values())
        # In the same transaction: the batch that takes a request past a threshold pauses it.
        alarming = {email.request_id for email in changed.values() if email.status in guard.ALARMING}
        alarming |= {email.request_id for email in hard.values()}
        result.paused = len(guard.check(alarming, now)) if alarming else 0
    return result


def _prepare(payload):
    """(key, TrackingEvent or None, payload as JSON, error) for one event or queued payload."""
    if isinstance(payload, TrackingEvent):
        return payload.key, payload, payload.to_dict(), ""
    try:
        event = TrackingEvent.from_dict(payload)
    except InvalidEvent as exc:
        raw = json.dumps(payload, sort_keys=True, default=str)
        return "invalid:" + hashlib.sha256(raw.encode()).hexdigest()[:40], None, payload, str(exc)
    return event.key, event, payload, ""


def _only_new(items, now, result):
    """The items whose key was never applied (once each); the rest are counted as duplicates."""
    new_keys = _remember(sorted({key for key, *_ in items}), now)
    fresh = []
    for item in items:
        if item[0] in new_keys:
            new_keys.discard(item[0])  # a second copy within the batch is a duplicate too
            fresh.append(item)
        else:
            result.duplicates += 1
    return fresh


def _first_hard_bounces(hard, before):
    """Of the emails reported hard-bounced in this batch, those never reported so before: counted once each.

    An email that was below "bounced" before the batch had no hard report (one would have moved it
    there). One already bounced or complained may have had one: its log says (the line of each
    event applied, DeliveryEvent.text, names the kind as TrackingEvent.describe() writes it).
    """
    seen = [pk for pk in hard if states.TRACKING_RANK[before[pk]] >= states.TRACKING_RANK[states.EmailStatus.BOUNCED]]
    if seen:
        earlier = DeliveryEvent.objects.filter(
            email_id__in=seen, kind=DeliveryEvent.Kind.TRACKING, text__regex=HARD_LINE
        ).values_list("email_id", flat=True)
        for pk in set(earlier):
            del hard[pk]
    return hard


# How an applied hard bounce's line in the email's log begins: "[event id] bounced (hard) from ..." (_log_row).
# Anchored, so that a diagnostic quoting those words (a remote server writes it) cannot pass for one.
HARD_LINE = rf"^\[[^]]*\] {EventType.BOUNCED} \({BounceType.HARD}\) from "


def _write(changed, log_rows, unmatched, suppress, now, hard=()):
    for email in changed:
        # Clearing the claim means a sender still holding it cannot write "sent" over this.
        TextOfEmail.objects.filter(pk=email.pk).update(
            status=email.status,
            status_changed_at=now,
            claim_token=None,
            leased_until=None,
            last_error=email.last_error[:2000],
        )
    # Counted for the dashboard by the day the report was applied (the MTA's clock is not ours).
    day = rollup.day_of(now)
    rollup.count(
        [
            *((day, email.account_id, email.request_id, email.status) for email in changed),
            *((day, email.account_id, email.request_id, HARD_BOUNCED) for email in hard),
        ]
    )
    DeliveryEvent.objects.bulk_create(log_rows)
    UnmatchedTrackingEvent.objects.bulk_create(unmatched)
    Suppression.objects.bulk_create(
        [
            Suppression(address=address, reason=reason, note=event.describe()[:500], created_at=now)
            for address, (reason, event) in suppress.items()
        ],
        ignore_conflicts=True,  # an address already suppressed keeps its first reason
    )


def _remember(keys, now):
    """Insert the keys not seen before and return those; concurrent jobs cannot both get one.

    Sorted keys make every job take the unique-index locks in one order, so two never deadlock.
    """
    if not keys:
        return set()
    table = connection.ops.quote_name(AppliedTrackingEvent._meta.db_table)
    when = connection.ops.adapt_datetimefield_value(now)
    values = ", ".join(["(%s, %s)"] * len(keys))
    params = [p for key in keys for p in (key, when)]
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {table} ("key", "applied_at") VALUES {values} ON CONFLICT ("key") DO NOTHING RETURNING "key"',
            params,
        )
        return {row[0] for row in cursor.fetchall()}


def _resolve_queue_ids(events):
    """{queue id: Message-ID} for the events that name their email by the MTA's queue id alone."""
    found = {}
    for event in events:
        if event.queue_id and not event.message_id and not event.tracking_id and event.queue_id not in found:
            found[event.queue_id] = message_id_for_queue_id(event.queue_id, event.timestamp)
    return {queue_id: message_id for queue_id, message_id in found.items() if message_id}


def _lock_emails(events, more_message_ids=()):
    pks = {pk for pk in (email_pk_from_tracking_id(e.tracking_id) for e in events if e.tracking_id) if pk}
    message_ids = {e.message_id for e in events if e.message_id} | set(more_message_ids)
    if not pks and not message_ids:
        return {}, {}
    emails = list(
        TextOfEmail.objects.select_for_update()
        .filter(Q(pk__in=pks) | Q(message_id__in=message_ids))
        .only("pk", "status", "to_address", "message_id", "last_error", "account_id", "request_id")
        .order_by("pk")  # one lock order for every job, so two never deadlock
    )
    return {e.pk: e for e in emails}, {e.message_id: e for e in emails}


def _log_row(email, event):
    return DeliveryEvent(
        email_id=email.pk,
        at=event.timestamp,
        kind=DeliveryEvent.Kind.TRACKING,
        outcome=email.status,
        smtp_code=smtp_code(event.diagnostic),
        text=f"[{event.event_id}] {event.describe()}"[:2000],
    )


def _unmatched(key, event, payload, reason, error=""):
    return UnmatchedTrackingEvent(
        key=key[:300],
        reason=reason,
        error=error[:500],
        event=str(event.event)[:16] if event else "",
        message_id=event.message_id[:255] if event else "",
        recipient=event.recipient[:254] if event else "",
        occurred_at=event.timestamp if event else None,
        source=event.source[:100] if event else "",
        payload=payload,
    )


def retry_unmatched(queryset):
    """Apply kept unmatched events again (their email may exist now); returns the ApplyResult."""
    with transaction.atomic():
        rows = list(queryset.select_for_update())
        AppliedTrackingEvent.objects.filter(key__in=[row.key for row in rows]).delete()
        UnmatchedTrackingEvent.objects.filter(pk__in=[row.pk for row in rows]).delete()
        return apply_batch([row.payload for row in rows])
