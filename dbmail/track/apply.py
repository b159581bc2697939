"""MTA status events: one normalised shape, one precedence table, one way to apply them.

Every source (the webhook, the log follower, bounces through the mailgate,
anymail's signal) hands a plain dict to publish(). It is checked and
normalised here, put on the tracking queue (dbmail.track.queue), and
applied later by the dbmail_track job through apply_batch(): one transaction
per batch, acknowledged only after the commit. Event keys are remembered, so
a redelivered batch changes nothing; events for no email of ours are kept.
"""

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from django.core import signing
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from dbmail.conf import settings as conf
from dbmail.exceptions import InvalidEvent
from dbmail.models import AppliedTrackingEvent, DeliveryEvent, Suppression, TextOfEmail, UnmatchedTrackingEvent
from dbmail.track.queue import get_queue

log = logging.getLogger(__name__)
Status = TextOfEmail.Status

EVENTS = ("delivered", "deferred", "bounced", "complained", "rejected", "opened")
BOUNCE_TYPES = ("hard", "soft")

# THE table. An event leads to a status; it is applied only when that status ranks higher
# than the email's current one. So final states win, nothing moves backwards (a delivered
# email never becomes "deferred" again), and the order in which events arrive does not
# change where an email ends up. A "deferred" report from the MTA means the MTA has the
# email and retries it itself: it can at most confirm "sent" (our own "deferred" would
# make dbmail_cron send it again).
EVENT_STATUS = {
    "deferred": Status.SENT,
    "rejected": Status.DROPPED,
    "delivered": Status.DELIVERED,
    "opened": Status.DELIVERED,
    "bounced": Status.BOUNCED,
    "complained": Status.COMPLAINED,
}
RANK = {
    Status.QUEUED: 0,
    Status.SENDING: 0,
    Status.DEFERRED: 0,
    Status.CANCELLED: 0,
    Status.SENT: 1,
    Status.DROPPED: 2,
    Status.DELIVERED: 3,
    Status.BOUNCED: 4,
    Status.COMPLAINED: 5,
}

TRACKING_HEADER = "X-Mailsite-Email"
_TRACKING_SALT = "dbmail.tracking"
_SMTP_CODE = re.compile(r"\b([245])[0-9]{2}\b")
_ENHANCED_CODE = re.compile(r"\b([245])\.[0-9]{1,3}\.[0-9]{1,3}\b")
_LIMITS = {"event_id": 200, "message_id": 255, "tracking_id": 100, "recipient": 254, "source": 64}


def next_status(current, event):
    """The status an email in `current` has after `event`, by the table above."""
    target = EVENT_STATUS[event]
    return target if RANK[target] > RANK[current] else current


# --- Our own tracking header: every outbound email names itself, whatever its Message-ID became ---


def tracking_id(email_pk):
    """The signed value of the X-Mailsite-Email header for one email."""
    return signing.Signer(salt=_TRACKING_SALT).sign(str(email_pk))


def email_pk_from_tracking_id(value):
    """The email's primary key, or None when the value is malformed or forged."""
    try:
        return int(signing.Signer(salt=_TRACKING_SALT).unsign(value))
    except (signing.BadSignature, ValueError, TypeError):
        return None


# --- The normalised event ---


def normalise_message_id(value):
    value = value.strip()
    if value and not value.startswith("<"):
        value = f"<{value}>"
    return value


def _text(data, key, required=False):
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise InvalidEvent(f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise InvalidEvent(f"{key} must be a string")
    value = value.strip()
    limit = _LIMITS.get(key)
    if limit and len(value) > limit:
        raise InvalidEvent(f"{key} is longer than {limit} characters")
    return value


def _timestamp(value):
    if isinstance(value, bool) or value is None or value == "":
        raise InvalidEvent("timestamp is required (ISO 8601 or Unix seconds)")
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(f"timestamp {value!r} is out of range") from None
    if isinstance(value, str):
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)
    raise InvalidEvent(f"timestamp {value!r} is not ISO 8601 or Unix seconds")


def infer_bounce_type(diagnostic):
    """hard for a 5xx/5.x.x reply, soft for 4xx/4.x.x, None when the text names no code."""
    match = _ENHANCED_CODE.search(diagnostic) or _SMTP_CODE.search(diagnostic)
    if not match:
        return None
    return {"5": "hard", "4": "soft"}.get(match[1])


def normalise(data):
    """A checked event dict with every key present, or InvalidEvent naming the problem."""
    if not isinstance(data, dict):
        raise InvalidEvent("an event must be a JSON object")
    event = _text(data, "event", required=True).lower()
    if event not in EVENTS:
        raise InvalidEvent(f"event {event!r} is not one of {', '.join(EVENTS)}")
    message_id = normalise_message_id(_text(data, "message_id"))
    tracking = _text(data, "tracking_id")
    if not message_id and not tracking:
        raise InvalidEvent("message_id or tracking_id is required")
    when = _timestamp(data.get("timestamp"))
    diagnostic = data.get("diagnostic") or ""
    if not isinstance(diagnostic, str):
        raise InvalidEvent("diagnostic must be a string")
    diagnostic = diagnostic.strip()[:2000]
    bounce_type = data.get("bounce_type") or None
    if bounce_type is not None and bounce_type not in BOUNCE_TYPES:
        raise InvalidEvent(f"bounce_type {bounce_type!r} is not hard, soft or null")
    if event != "bounced":
        bounce_type = None
    elif bounce_type is None:
        bounce_type = infer_bounce_type(diagnostic)
    normalised = {
        "event_id": _text(data, "event_id"),
        "message_id": message_id,
        "tracking_id": tracking,
        "event": event,
        "bounce_type": bounce_type,
        "recipient": _text(data, "recipient"),
        "timestamp": when.astimezone(UTC).isoformat(),
        "diagnostic": diagnostic,
        "source": _text(data, "source") or "unknown",
    }
    if not normalised["event_id"]:
        # A sender without ids still gets deduplicated: the same report gives the same id.
        content = json.dumps([normalised[k] for k in sorted(normalised) if k != "event_id"])
        normalised["event_id"] = "sha256:" + hashlib.sha256(content.encode()).hexdigest()[:40]
    return normalised


def event_key(event):
    """What makes an event unique: its id within its source."""
    return f"{event['source']}:{event['event_id']}"


def publish(event):
    """Check one event and put it on the tracking queue; durable when this returns.

    Raises InvalidEvent for a bad event, tracking_queue.QueueUnavailable when the queue is down.
    """
    publish_many([event])


def publish_many(events):
    """Check all events first (nothing is published if one is bad), then queue them."""
    checked = []
    for index, event in enumerate(events):
        try:
            checked.append(normalise(event))
        except InvalidEvent as exc:
            raise InvalidEvent(f"event {index}: {exc}" if len(events) > 1 else str(exc)) from None
    if checked:
        get_queue().publish(checked)
    return checked


# --- Applying a batch ---


@dataclass
class ApplyResult:
    applied: int = 0  # new events for an email of ours
    changed: int = 0  # of those, how many moved an email's status
    duplicates: int = 0
    unmatched: int = 0
    invalid: int = 0

    def __iadd__(self, other):
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self):
        return (
            f"applied {self.applied} ({self.changed} changed a status), duplicates {self.duplicates}, "
            f"unmatched {self.unmatched}, invalid {self.invalid}"
        )


def apply_batch(payloads, now=None):
    """Apply queued events (as published, or whatever was read off the queue) in one transaction."""
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
        events = sorted((item for item in fresh if item[1] is not None), key=lambda item: item[1]["timestamp"])
        by_pk, by_message_id = _lock_emails([event for _, event, _, _ in events])
        changed, log_rows, suppress = {}, [], {}
        for key, event, payload, _ in events:
            email = by_pk.get(email_pk_from_tracking_id(event["tracking_id"])) or by_message_id.get(event["message_id"])
            if email is None:
                unmatched.append(_unmatched(key, event, payload, UnmatchedTrackingEvent.Reason.UNKNOWN_EMAIL))
                continue
            result.applied += 1
            status = next_status(email.status, event["event"])
            if status != email.status:
                email.status = status
                if status in (Status.DROPPED, Status.BOUNCED, Status.COMPLAINED):
                    email.last_error = event["diagnostic"] or event["event"]
                changed[email.pk] = email
            log_rows.append(_log_row(email, event))
            if event["event"] == "complained":
                suppress[email.to_address.lower()] = (Suppression.Reason.COMPLAINED, event)
            elif event["event"] == "bounced" and event["bounce_type"] == "hard":
                suppress.setdefault(email.to_address.lower(), (Suppression.Reason.BOUNCED, event))
        result.changed = len(changed)
        result.unmatched = len(unmatched) - result.invalid
        _write(changed.values(), log_rows, unmatched, suppress, now)
    return result


def _prepare(payload):
    """(key, normalised event or None, payload, error) for one queued payload."""
    try:
        event = normalise(payload)
    except InvalidEvent as exc:
        raw = json.dumps(payload, sort_keys=True, default=str)
        return "invalid:" + hashlib.sha256(raw.encode()).hexdigest()[:40], None, payload, str(exc)
    return event_key(event), event, payload, ""


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


def _write(changed, log_rows, unmatched, suppress, now):
    for email in changed:
        # Clearing the claim means a sender still holding it cannot write "sent" over this.
        TextOfEmail.objects.filter(pk=email.pk).update(
            status=email.status,
            status_changed_at=now,
            claim_token=None,
            leased_until=None,
            last_error=email.last_error[:2000],
        )
    DeliveryEvent.objects.bulk_create(log_rows)
    UnmatchedTrackingEvent.objects.bulk_create(unmatched)
    Suppression.objects.bulk_create(
        [
            Suppression(address=address, reason=reason, note=_describe(event)[:500], created_at=now)
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


def _lock_emails(events):
    pks = {pk for pk in (email_pk_from_tracking_id(e["tracking_id"]) for e in events if e["tracking_id"]) if pk}
    message_ids = {e["message_id"] for e in events if e["message_id"]}
    if not pks and not message_ids:
        return {}, {}
    emails = list(
        TextOfEmail.objects.select_for_update()
        .filter(Q(pk__in=pks) | Q(message_id__in=message_ids))
        .only("pk", "status", "to_address", "message_id", "last_error")
        .order_by("pk")  # one lock order for every job, so two never deadlock
    )
    return {e.pk: e for e in emails}, {e.message_id: e for e in emails}


def _describe(event):
    kind = event["event"] + (f" ({event['bounce_type']})" if event["bounce_type"] else "")
    parts = [f"{kind} from {event['source']}"]
    if event["recipient"]:
        parts.append(f"for {event['recipient']}")
    text = " ".join(parts)
    return f"{text}: {event['diagnostic']}" if event["diagnostic"] else text


def _log_row(email, event):
    code = _SMTP_CODE.search(event["diagnostic"])
    return DeliveryEvent(
        email_id=email.pk,
        at=parse_datetime(event["timestamp"]),
        kind=DeliveryEvent.Kind.TRACKING,
        outcome=email.status,
        smtp_code=int(code[0]) if code else None,
        text=f"[{event['event_id']}] {_describe(event)}"[:2000],
    )


def _unmatched(key, event, payload, reason, error=""):
    event = event or {}
    return UnmatchedTrackingEvent(
        key=key[:300],
        reason=reason,
        error=error[:500],
        event=str(event.get("event", ""))[:16],
        message_id=event.get("message_id", "")[:255],
        recipient=event.get("recipient", "")[:254],
        occurred_at=parse_datetime(event["timestamp"]) if event else None,
        source=event.get("source", "")[:100],
        payload=payload,
    )


def retry_unmatched(queryset):
    """Apply kept unmatched events again (their email may exist now); returns the ApplyResult."""
    with transaction.atomic():
        rows = list(queryset.select_for_update())
        AppliedTrackingEvent.objects.filter(key__in=[row.key for row in rows]).delete()
        UnmatchedTrackingEvent.objects.filter(pk__in=[row.pk for row in rows]).delete()
        return apply_batch([row.payload for row in rows])


# --- The job: read the queue in batches, apply each in one transaction, then acknowledge ---


@dataclass
class RunResult:
    batches: int = 0
    seconds: float = 0.0
    totals: ApplyResult = field(default_factory=ApplyResult)

    def summary(self):
        return f"{self.totals.summary()} in {self.batches} batch{'es' * (self.batches != 1)}, {self.seconds:.1f}s"


def consume(queue=None, batch_size=None, max_batches=None, should_stop=lambda: False):
    """Drain the tracking queue. A crash before an acknowledgement redelivers; the keys make that harmless."""
    queue = queue or get_queue()
    batch_size = batch_size or conf.TRACKING_BATCH_SIZE
    run, clock = RunResult(), time.monotonic()
    while not should_stop() and (max_batches is None or run.batches < max_batches):
        deliveries = queue.fetch(batch_size)
        if not deliveries:
            break
        try:
            result = apply_batch([d.payload for d in deliveries])
        except Exception:
            queue.release(deliveries)
            raise
        queue.ack(deliveries)
        run.batches += 1
        run.totals += result
    run.seconds = time.monotonic() - clock
    return run
