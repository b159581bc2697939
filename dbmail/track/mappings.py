"""Status callbacks in the shapes MTAs send them: TRACKING_WEBHOOK_MAPPINGS turns each into our event.

The setting holds JSON: one mapping per sender, by name; mapping NAME serves
POST /tracking/events/NAME/ (dbmail.track.webhooks), authenticated like our
own endpoint. For example, a notifier posting
{"event": "delivery-status", "status": "expired", "message_id": "<...>"}:

    {"efs": {"event_field": "event", "status_field": "status",
             "events": {"delivery-status": {"sent": "delivered", "deferred": "deferred",
                                            "bounced": "bounced", "expired": "bounced"}},
             "id_field": "message_id", "id_kind": "message_id"}}

Fields are dotted paths into the posted object ("payload.message.message_id";
a number indexes a list). `events` maps the sender's event name to one of
ours, to {status: ours} read with `status_field`, or to null (acknowledged,
not queued, as for clicks); "*" stands for every other name. A name (or
status) the mapping does not know is refused with 400, so nothing is lost
unnoticed: the sender retries once the mapping names it.

`id_kind` says what `id_field` holds: our `message_id`, our `tracking` header
(X-Mailsite-Email), or the MTA's `queue_id` (from its "250 ... queued as ID"
reply, which the email's log keeps; dbmail.track.mta_ids). Without
`event_id_field` (or with it empty) the event id is a digest of the posted
object itself, so a replay of the same object is recognised even when it
carries no time stamp: the applier applies each event id once.

This module imports no model: dbmail.conf checks the setting with problem()
before Django is set up.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache

from django.utils import timezone

from dbmail.exceptions import InvalidEvent
from dbmail.exceptions import WebhookMappingError as MappingError
from dbmail.track.events import EventType

SETTING = "TRACKING_WEBHOOK_MAPPINGS"
ID_KINDS = {"message_id": "message_id", "tracking": "tracking_id", "queue_id": "queue_id"}
ANY = "*"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")
_REQUIRED = ("event_field", "events", "id_field")
_PATHS = (
    "event_field",
    "status_field",
    "id_field",
    "timestamp_field",
    "event_id_field",
    "recipient_field",
    "diagnostic_field",
)
_KEYS = {*_PATHS, "events", "id_kind", "source"}


@dataclass(frozen=True)
class Mapping:
    name: str
    event_field: str
    events: dict
    id_field: str
    id_kind: str = "message_id"
    status_field: str = ""
    timestamp_field: str = ""
    event_id_field: str = ""
    recipient_field: str = ""
    diagnostic_field: str = ""
    source: str = ""

    def event_dict(self, posted):
        """The TrackingEvent fields for one posted object, or None when its event is mapped to null.

        InvalidEvent names the field or value that does not fit this mapping.
        """
        if not isinstance(posted, dict):
            raise InvalidEvent("an event must be a JSON object")
        ours = self._our_event(posted)
        if ours is None:
            return None
        identifier = _scalar(lookup(posted, self.id_field), self.id_field)
        if not identifier:
            raise InvalidEvent(f"{self.id_field} (the email's {self.id_kind}) is missing")
        timestamp = lookup(posted, self.timestamp_field) if self.timestamp_field else None
        if self.timestamp_field and timestamp in (None, ""):
            raise InvalidEvent(f"{self.timestamp_field} is missing")
        event_id = _scalar(lookup(posted, self.event_id_field), self.event_id_field) if self.event_id_field else ""
        return {
            "event": ours,
            ID_KINDS[self.id_kind]: identifier,
            "timestamp": timestamp if timestamp is not None else timezone.now(),
            "recipient": _scalar(lookup(posted, self.recipient_field), self.recipient_field),
            "diagnostic": _text(lookup(posted, self.diagnostic_field)),
            "event_id": event_id or content_id(posted),
            "source": self.source or self.name,
        }

    def _our_event(self, posted):
        name = lookup(posted, self.event_field)
        if not isinstance(name, str) or not name:
            raise InvalidEvent(f"{self.event_field} (the event's name) is missing or not a string")
        if name in self.events:
            target = self.events[name]
        elif ANY in self.events:
            target = self.events[ANY]
        else:
            raise InvalidEvent(f"{self.event_field} {name!r} is not in {SETTING}[{self.name!r}]['events']")
        if not isinstance(target, dict):
            return target
        status = lookup(posted, self.status_field)
        if isinstance(status, str) and status in target:
            return target[status]
        if ANY in target:
            return target[ANY]
        raise InvalidEvent(
            f"{self.status_field} {status!r} of event {name!r} is not in {SETTING}[{self.name!r}]['events'][{name!r}]"
        )


def lookup(data, path):
    """The value at a dotted path ("payload.message.id", "recipients.0"), or None."""
    if not path:
        return None
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def content_id(posted):
    """An event id from the posted object itself: the same object always gets the same one."""
    canonical = json.dumps(posted, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def _scalar(value, path):
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidEvent(f"{path} must be a string")
    return str(value)


def _text(value):
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)  # a structured diagnostic is kept readable


# --- the setting ---


def parse(raw):
    """{name: Mapping} from the setting's JSON text ("" -> {}); MappingError says what is wrong."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise MappingError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError('must be a JSON object of mappings by name: {"NAME": {"event_field": ...}, ...}')
    return {name: _mapping(name, spec) for name, spec in data.items()}


@lru_cache(maxsize=8)
def parsed(raw):
    """parse(), once per distinct value (the view reads the setting on every request)."""
    return parse(raw)


def problem(raw):
    """ "" or the rest of the sentence after "Setting TRACKING_WEBHOOK_MAPPINGS" (dbmail.conf)."""
    try:
        parse(raw)
    except MappingError as exc:
        return f": {exc}"
    return ""


def _mapping(name, spec):
    where = f"mapping {name!r}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise MappingError(f"{where}: a name is 1-40 lower-case letters, digits, _ or - (it is part of the URL)")
    if not isinstance(spec, dict):
        raise MappingError(f"{where} must be a JSON object")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise MappingError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    missing = [key for key in _REQUIRED if key not in spec]
    if missing:
        raise MappingError(f"{where}: {missing[0]!r} is required")
    for key in _PATHS:
        value = spec.get(key, "")
        if not isinstance(value, str) or (value and not _PATH.fullmatch(value)):
            raise MappingError(f'{where}: {key!r} must be a dotted path such as "payload.message_id"')
    id_kind = spec.get("id_kind", "message_id")
    if id_kind not in ID_KINDS:
        raise MappingError(f"{where}: 'id_kind' {id_kind!r} is not one of {', '.join(ID_KINDS)}")
    source = spec.get("source", "")
    if not isinstance(source, str) or len(source) > 64:
        raise MappingError(f"{where}: 'source' must be a string of at most 64 characters")
    events = spec["events"]
    if not isinstance(events, dict) or not events:
        raise MappingError(f"{where}: 'events' must be a non-empty object of the sender's event names")
    checked = {}
    for event, target in events.items():
        if isinstance(target, dict):
            if not spec.get("status_field"):
                raise MappingError(f"{where}: event {event!r} maps statuses, so 'status_field' is required")
            if not target:
                raise MappingError(f"{where}: event {event!r} maps no status")
            checked[event] = {status: _ours(where, f"{event}/{status}", t) for status, t in target.items()}
        else:
            checked[event] = _ours(where, event, target)
    return Mapping(
        name=name,
        events=checked,
        id_kind=id_kind,
        source=source,
        **{key: spec.get(key, "") for key in _PATHS},
    )


def _ours(where, what, target):
    if target is None:
        return None
    if isinstance(target, str) and target.lower() in tuple(EventType):
        return EventType(target.lower())
    raise MappingError(f"{where}: {what!r} -> {target!r} is not one of {', '.join(EventType)} (or null to ignore it)")
