"""Tracking for MTAs that cannot call back: follow a Postfix or Exim log.

The follower reads complete lines from where it stopped (a cursor in the
database, so a restart neither skips nor rereads much), survives rotation
(a renamed file is read to its end before the new one is opened; a truncated
file is read again from the start) and turns delivery lines into tracking
events for our emails:

- Postfix: `<qid>: message-id=<...>` and `<qid>: to=<...>, ... status=sent|deferred|bounced|expired (...)`
- Exim: `<id> <= ... id=<message-id>` and `<id> => / -> / ** / == <recipient> ...`

A line belongs to one of our emails by its Message-ID (seen earlier in the
log under the same queue id) or, failing that, by its queue id, which the
MTA named in its "250 ... queued as <qid>" reply to our send (stored in the
attempt's DeliveryEvent). Lines for other mail are skipped. Event ids are
digests of the line, so reading a line twice publishes nothing new.
"""

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from dbmail.models import LogCursor, TextOfEmail
from dbmail.track import queue
from dbmail.track.events import BounceType, EventType, TrackingEvent, infer_bounce_type, normalise_message_id
from dbmail.track.mta_ids import message_id_for_queue_id

CHUNK = 1 << 20  # bytes read per look; a busy log is worked through in several polls
REMEMBERED = 100_000  # queue ids kept in memory per map


@dataclass
class LogRecord:
    queue_id: str
    kind: str  # "message-id", "delivery" or "done"
    when: datetime | None = None
    message_id: str = ""
    recipient: str = ""
    event: EventType | None = None
    bounce_type: BounceType | None = None
    diagnostic: str = ""


# --- Parsing ---

_SYSLOG = re.compile(
    r"^(?:(?P<iso>\d{4}-\d\d-\d\dT\S+)|(?P<bsd>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d))"
    r" +\S+ +(?P<prog>[\w./-]+?)(?:\[\d+\])?: +(?P<msg>.*)$"
)
_POSTFIX_MSG = re.compile(r"^(?P<qid>[0-9A-Za-z]{5,}): +(?P<rest>.*)$")
_POSTFIX_TO = re.compile(r"^to=<(?P<rcpt>[^>]*)>,")
_POSTFIX_STATUS = re.compile(r"\bstatus=(?P<status>\w+)(?: \((?P<text>.*)\))?\s*$")
_POSTFIX_DSN = re.compile(r"\bdsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3})")
_POSTFIX_EVENTS = {
    "sent": EventType.DELIVERED,
    "deferred": EventType.DEFERRED,
    "bounced": EventType.BOUNCED,
    "expired": EventType.BOUNCED,
}

_EXIM = re.compile(
    r"^(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)(?: (?P<tz>[-+]\d{4}))?(?: \[\d+\])?"
    r" (?P<qid>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) (?P<rest>.*)$"
)
_EXIM_EVENTS = {"=>": EventType.DELIVERED, "->": EventType.DELIVERED, "**": EventType.BOUNCED, "==": EventType.DEFERRED}
_EXIM_CONFIRM = re.compile(r'\bC="(?P<text>(?:[^"\\]|\\.)*)"')


def _local(naive):
    return timezone.make_aware(naive, timezone.get_current_timezone())


def _syslog_time(match, now):
    if match["iso"]:
        parsed = datetime.fromisoformat(match["iso"])
        return parsed if timezone.is_aware(parsed) else _local(parsed)
    # Traditional syslog stamps have no year: take this year's, or last year's if that is in the future.
    stamp = " ".join(match["bsd"].split())
    when = _local(datetime.strptime(f"{now.year} {stamp}", "%Y %b %d %H:%M:%S"))
    return when if when <= now + timedelta(days=1) else when.replace(year=now.year - 1)


def parse_postfix(line, now=None):
    match = _SYSLOG.match(line)
    if not match or not match["prog"].startswith("postfix"):
        return None
    msg = _POSTFIX_MSG.match(match["msg"])
    if not msg or msg["qid"] == "NOQUEUE":
        return None
    qid, rest = msg["qid"], msg["rest"]
    when = _syslog_time(match, now or timezone.now())
    if rest.startswith("message-id="):
        return LogRecord(qid, "message-id", when, message_id=rest[len("message-id=") :].strip())
    if rest.strip() == "removed":
        return LogRecord(qid, "done", when)
    to, status = _POSTFIX_TO.match(rest), _POSTFIX_STATUS.search(rest)
    if not to or not status or status["status"] not in _POSTFIX_EVENTS:
        return None
    event = _POSTFIX_EVENTS[status["status"]]
    dsn = _POSTFIX_DSN.search(rest)
    diagnostic = " ".join(part for part in (dsn and dsn["dsn"], status["text"]) if part)
    bounce_type = None
    if event == EventType.BOUNCED:
        expired = status["status"] == "expired"
        bounce_type = BounceType.SOFT if expired else infer_bounce_type(diagnostic) or BounceType.HARD
    return LogRecord(
        qid, "delivery", when, recipient=to["rcpt"], event=event, bounce_type=bounce_type, diagnostic=diagnostic
    )


def parse_exim(line, now=None):
    match = _EXIM.match(line)
    if not match:
        return None
    when = datetime.fromisoformat(match["when"] + (match["tz"] or ""))
    when = when if timezone.is_aware(when) else _local(when)
    qid, rest = match["qid"], match["rest"]
    flag, _, tail = rest.partition(" ")
    if flag == "<=":
        message_id = re.search(r"(?:^| )id=(\S+)", tail)
        return LogRecord(qid, "message-id", when, message_id=message_id[1] if message_id else "")
    if rest.strip() == "Completed":
        return LogRecord(qid, "done", when)
    if flag not in _EXIM_EVENTS:
        return None
    event = _EXIM_EVENTS[flag]
    recipient = tail.split(" ", 1)[0].strip("<>")
    if event == EventType.DELIVERED:
        confirm = _EXIM_CONFIRM.search(tail)
        diagnostic = confirm["text"] if confirm else ""
    else:
        # "<rcpt> R=router T=transport ...: <the reason>": the reason is after the first ": ".
        diagnostic = tail.partition(": ")[2] or tail
    bounce_type = None
    if event == EventType.BOUNCED:
        soft = "retry timeout exceeded" in diagnostic or "retry time not reached" in diagnostic
        bounce_type = BounceType.SOFT if soft else infer_bounce_type(diagnostic) or BounceType.HARD
    return LogRecord(
        qid, "delivery", when, recipient=recipient, event=event, bounce_type=bounce_type, diagnostic=diagnostic.strip()
    )


PARSERS = {"postfix": parse_postfix, "exim": parse_exim}


# --- Matching lines to our emails ---


class _Bounded(OrderedDict):
    def remember(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class Follower:
    """Reads new lines of one log and publishes tracking events for our emails."""

    def __init__(self, path, log_format):
        self.path = os.path.abspath(path)
        self.parse = PARSERS[log_format]
        self.source = log_format
        self.logged_ids = _Bounded()  # queue id -> Message-ID seen in the log
        self.ours = _Bounded()  # queue id -> our email's Message-ID, or None for other mail
        self.file = None
        self.inode = None
        self.offset = 0
        self.head = b""  # the file's first bytes, to notice it was truncated and written past our offset
        self.skipped = 0  # delivery lines for mail that is not ours

    def poll(self):
        """Publish events for the complete lines written since the last poll; returns how many."""
        if self.file is None and not self._open():
            return 0
        if self._truncated():
            self.offset, self.head = 0, b""
        self.file.seek(self.offset)
        data = self.file.read(CHUNK)
        end = data.rfind(b"\n") + 1
        if not end:
            self._check_rotation()
            return 0
        now = timezone.now()
        events = []
        for raw in data[:end].splitlines():
            record = self.parse(raw.decode("utf-8", "replace").rstrip("\r"), now)
            if record is not None:
                event = self._event(record, raw)
                if event:
                    events.append(event)
        if events:
            queue.publish_many(events)  # raises if the queue is down: the cursor stays put
        if self.offset < 256:
            self.head = (self.head[: self.offset] + data[:end])[:256]
        self.offset += end
        LogCursor.objects.update_or_create(path=self.path, defaults={"inode": self.inode, "offset": self.offset})
        return len(events)

    def _open(self, fresh=False):
        try:
            self.file = open(self.path, "rb")
        except FileNotFoundError:
            return False
        stat = os.fstat(self.file.fileno())
        self.inode, self.offset = stat.st_ino, 0
        cursor = None if fresh else LogCursor.objects.filter(path=self.path).first()
        if cursor and cursor.inode == stat.st_ino and cursor.offset <= stat.st_size:
            self.offset = cursor.offset
        self.head = self._read_head(min(self.offset, 256))
        return True

    def _read_head(self, size=256):
        self.file.seek(0)
        return self.file.read(size)

    def _truncated(self):
        """copytruncate: the file got shorter, or was cut and has already grown past where we were."""
        size = os.fstat(self.file.fileno()).st_size
        return size < self.offset or self._read_head(len(self.head)) != self.head

    def _check_rotation(self):
        """At the end of the file: move to the new file at the path once the old one was renamed."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return  # renamed and not yet recreated; keep the old one until the new one appears
        if stat.st_ino != self.inode:
            self.file.close()
            self._open(fresh=True)

    def _event(self, record, raw):
        if record.kind == "message-id":
            if record.message_id:
                self.logged_ids.remember(record.queue_id, normalise_message_id(record.message_id))
            return None
        if record.kind == "done":
            self.logged_ids.pop(record.queue_id, None)
            self.ours.pop(record.queue_id, None)
            return None
        message_id = self._match(record)
        if message_id is None:
            self.skipped += 1
            return None
        return TrackingEvent(
            event_id="line:" + hashlib.sha256(raw).hexdigest()[:40],
            message_id=message_id,
            event=record.event,
            bounce_type=record.bounce_type,
            recipient=record.recipient,
            timestamp=record.when,
            diagnostic=f"{record.diagnostic} (queue id {record.queue_id})".strip(),
            source=self.source,
        )

    def _match(self, record):
        qid = record.queue_id
        if qid not in self.ours:
            logged = self.logged_ids.get(qid)
            if logged and TextOfEmail.objects.filter(message_id=logged).exists():
                self.ours.remember(qid, logged)
            elif logged:
                self.ours.remember(qid, None)
            else:
                self.ours.remember(qid, message_id_for_queue_id(qid, record.when))
        return self.ours[qid]
