"""One TrackingEvent: what any source says became of one outbound email.

Four sources report delivery (the MTA's callback, the Postfix/Exim log
follower, bounces through the mailgate, anymail's signal). Each builds a
TrackingEvent, which checks and normalises itself when it is made, so a bad
report fails where it comes from, with a message naming the field; the
tracking queue carries its to_dict() JSON, and the applier reads it back with
from_dict(). The JSON is the wire format: it stays as it is, so events queued
by an older version still apply.
"""

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from dbmail.exceptions import InvalidEvent


class EventType(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # the MTA keeps the email and retries it itself
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    REJECTED = "rejected"  # the MTA or provider refused it outright
    OPENED = "opened"  # proves delivery


class BounceType(StrEnum):
    HARD = "hard"  # permanent: the address is suppressed
    SOFT = "soft"


_SMTP_CODE = re.compile(r"\b([245])[0-9]{2}\b")
_ENHANCED_CODE = re.compile(r"\b([245])\.[0-9]{1,3}\.[0-9]{1,3}\b")
_LIMITS = {"event_id": 200, "message_id": 255, "tracking_id": 100, "queue_id": 100, "recipient": 254, "source": 64}
DIAGNOSTIC_LIMIT = 2000


def normalise_message_id(value):
    value = value.strip()
    if value and not value.startswith("<"):
        value = f"<{value}>"
    return value


def infer_bounce_type(diagnostic):
    """hard for a 5xx/5.x.x reply, soft for 4xx/4.x.x, None when the text names no code."""
    match = _ENHANCED_CODE.search(diagnostic) or _SMTP_CODE.search(diagnostic)
    if not match:
        return None
    return {"5": BounceType.HARD, "4": BounceType.SOFT}.get(match[1])


def smtp_code(diagnostic):
    """The first SMTP reply code in a diagnostic, or None."""
    match = _SMTP_CODE.search(diagnostic)
    return int(match[0]) if match else None


@dataclass(frozen=True, kw_only=True)
class TrackingEvent:
    """One report about one email, named by its Message-ID, our tracking header or the MTA's queue id.

    The queue id is the one the MTA named in its "250 ... queued as ID" reply to our send; the
    applier finds the email by it (dbmail.track.mta_ids) only when neither of the others is given.

    `timestamp` is a datetime (naive means UTC); from JSON also ISO 8601 text or Unix seconds.
    Without an `event_id` the same report always gets the same one, so a repeat is recognised.
    """

    event: EventType
    timestamp: datetime
    message_id: str = ""
    tracking_id: str = ""
    queue_id: str = ""
    recipient: str = ""
    diagnostic: str = ""
    bounce_type: BounceType | None = None
    source: str = "unknown"
    event_id: str = ""

    def __post_init__(self):
        # Checked in this order, so the first problem of a bad report is the one named.
        self._set("event", _event_type(_text(self.event, "event", required=True)))
        self._set("message_id", normalise_message_id(_text(self.message_id, "message_id")))
        self._set("tracking_id", _text(self.tracking_id, "tracking_id"))
        self._set("queue_id", _text(self.queue_id, "queue_id"))
        if not self.message_id and not self.tracking_id and not self.queue_id:
            raise InvalidEvent("message_id or tracking_id is required (or the MTA's queue_id)")
        self._set("timestamp", _timestamp(self.timestamp).astimezone(UTC))
        diagnostic = self.diagnostic or ""
        if not isinstance(diagnostic, str):
            raise InvalidEvent("diagnostic must be a string")
        self._set("diagnostic", diagnostic.strip()[:DIAGNOSTIC_LIMIT])
        self._set("bounce_type", self._bounce_type())
        self._set("event_id", _text(self.event_id, "event_id"))
        self._set("recipient", _text(self.recipient, "recipient"))
        self._set("source", _text(self.source, "source") or "unknown")
        if not self.event_id:
            content = json.dumps([value for key, value in sorted(self.to_dict().items()) if key != "event_id"])
            self._set("event_id", "sha256:" + hashlib.sha256(content.encode()).hexdigest()[:40])

    def _set(self, name, value):
        object.__setattr__(self, name, value)  # normalising once, while the frozen event is made

    def _bounce_type(self):
        value = self.bounce_type or None
        if value is not None and value not in tuple(BounceType):
            raise InvalidEvent(f"bounce_type {value!r} is not hard, soft or null")
        if self.event != EventType.BOUNCED:
            return None
        return BounceType(value) if value is not None else infer_bounce_type(self.diagnostic)

    @classmethod
    def from_dict(cls, data):
        """The event a JSON object (a webhook's, or the queue's) describes; InvalidEvent naming the problem."""
        if not isinstance(data, dict):
            raise InvalidEvent("an event must be a JSON object")
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def to_dict(self):
        """The queue's JSON for this event (every key present, the timestamp as ISO 8601 in UTC).

        queue_id is the one exception: present only when given, so the JSON (and the digest that is
        the event id of an event without one) of every other event is what earlier versions made.
        """
        data = asdict(self)
        data.update(
            event=str(self.event),
            bounce_type=str(self.bounce_type) if self.bounce_type else None,
            timestamp=self.timestamp.isoformat(),
        )
        return {key: data[key] for key in _WIRE_ORDER if key != "queue_id" or self.queue_id}

    @property
    def key(self):
        """What makes an event unique: its id within its source."""
        return f"{self.source}:{self.event_id}"

    def describe(self):
        """One line for the email's log: what, from whom, for whom, and the diagnostic."""
        kind = self.event + (f" ({self.bounce_type})" if self.bounce_type else "")
        text = f"{kind} from {self.source}" + (f" for {self.recipient}" if self.recipient else "")
        return f"{text}: {self.diagnostic}" if self.diagnostic else text


_WIRE_ORDER = (
    "event_id",
    "message_id",
    "tracking_id",
    "queue_id",
    "event",
    "bounce_type",
    "recipient",
    "timestamp",
    "diagnostic",
    "source",
)


def from_dicts(items):
    """The events of a list of JSON objects; InvalidEvent names the first bad one (by index when several)."""
    events = []
    for index, item in enumerate(items):
        try:
            events.append(TrackingEvent.from_dict(item))
        except InvalidEvent as exc:
            raise InvalidEvent(f"event {index}: {exc}" if len(items) > 1 else str(exc)) from None
    return events


def _text(value, key, required=False):
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


def _event_type(value):
    try:
        return EventType(value.lower())
    except ValueError:
        raise InvalidEvent(f"event {value.lower()!r} is not one of {', '.join(EventType)}") from None


def _timestamp(value):
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)
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
