"""A request's state and progress in plain words: what its page, its live JSON and the list show.

One place for the wording, so the page as first drawn and the page as the poll redraws it say
the same thing. Each email counts in exactly one bar segment; cancelled mail is never drawn
as sent, and "finished" is never said of mail that was cancelled.
"""

from dataclasses import dataclass

from django.utils import formats, timezone

from dbmail import states

Status = states.RequestStatus
E = states.EmailStatus
FAILED = Status.FAILED.value  # expansion failed: the request waits for a fix and a retry
PAUSED = Status.PAUSED.value  # the reputation guard paused it: a person resumes or cancels it
# Derived, never stored (dbmail.states.HELD): waiting mail of an inactive sender account, still waiting.
HELD = states.HELD
# The bar segment of mail that will not arrive (the styles and the script use the key too).
LOST = "failed"

# The bar, left to right: (key, label, the email statuses it counts).
SEGMENTS = (
    (E.SENT, "Sent", (E.SENT, E.DELIVERED, E.COMPLAINED)),
    (E.DEFERRED, "Deferred", (E.DEFERRED,)),
    (LOST, "Dropped or bounced", (E.DROPPED, E.BOUNCED)),
    (E.CANCELLED, "Cancelled", (E.CANCELLED,)),
    ("waiting", "Waiting", (E.QUEUED, E.SENDING, HELD)),
)
# The per-status chart's order.
SHOWN = [E.QUEUED, HELD, E.SENDING, E.SENT, E.DELIVERED, E.DEFERRED, E.DROPPED, E.BOUNCED, E.COMPLAINED, E.CANCELLED]

# A request's state as people say it: (key for styles, label).
# Draft and Cancelled are the request statuses of those names; "sending" covers queued-and-due,
# expanding, and expanded with mail still to go.
DRAFT, SCHEDULED, SENDING, DONE, CANCELLED = Status.DRAFT.value, "scheduled", "sending", "done", Status.CANCELLED.value
LABELS = {
    DRAFT: "Draft",
    SCHEDULED: "Scheduled",
    SENDING: "Sending",
    DONE: "Done",
    CANCELLED: "Cancelled",
    FAILED: "Failed",
    PAUSED: "Paused",
    HELD: "Held",
}


def state(mail, counts=None, now=None):
    """The key of the request's state: draft, scheduled, sending, done, cancelled, failed (or held)."""
    now = now or timezone.now()
    if mail.status == Status.DRAFT:
        return DRAFT
    if mail.status == Status.CANCELLED:
        return CANCELLED
    if mail.status == FAILED:
        return FAILED
    if mail.status == PAUSED:
        return PAUSED
    if getattr(mail, "held", False):
        return HELD
    if mail.status == Status.QUEUED and mail.send_at > now:
        return SCHEDULED
    if mail.status in states.REQUEST_TO_EXPAND:
        return SENDING
    counts = counts or {}
    if any(counts.get(s) for s in states.UNFINISHED):
        return SENDING
    if counts.get(HELD):  # all that is left waits for its sender account to be active again
        return HELD
    return DONE


def label(mail, counts=None, now=None):
    return LABELS[state(mail, counts, now)]


def editable(mail, now=None):
    """Content and time may change until expansion starts: a draft, or a request still queued."""
    return mail.status in (Status.DRAFT, Status.QUEUED)


def when(moment):
    """'3 Dec 2026 at 09:00' in the site's time zone."""
    local = timezone.localtime(moment)
    return f"{formats.date_format(local, 'j M Y')} at {local:%H:%M}"


def number(n):
    return f"{n:,}"


def plural(n, word, many=None):
    return f"{number(n)} {word if n == 1 else (many or word + 's')}"


@dataclass
class Pace:
    """Emails handled a minute and the seconds left for those waiting (None while unknown)."""

    per_minute: float | None = None
    eta_seconds: int | None = None

    @property
    def text(self):
        if not self.per_minute:
            return ""
        parts = [f"{number(round(self.per_minute))} a minute"]
        if self.eta_seconds is not None:
            parts.append(f"about {duration(self.eta_seconds)} left")
        return ", ".join(parts)


def duration(seconds):
    """'40 seconds', 'a minute', '12 minutes', '2 hours 5 minutes'."""
    seconds = max(0, int(seconds))
    if seconds < 50:
        return plural(max(seconds, 1), "second")
    minutes = round(seconds / 60)
    if minutes < 60:
        return "a minute" if minutes == 1 else f"{minutes} minutes"
    hours, minutes = divmod(minutes, 60)
    return plural(hours, "hour") + (f" {plural(minutes, 'minute')}" if minutes else "")


def pace(mail, segments, now):
    """The average pace since the request's emails were made (the page refines it from its polls)."""
    started = mail.expanded_at
    handled = segments[E.SENT] + segments[LOST]
    if not started or not handled:
        return Pace()
    elapsed = (now - started).total_seconds()
    if elapsed < 1:
        return Pace()
    per_minute = 60 * handled / elapsed
    return Pace(per_minute, round(60 * segments["waiting"] / per_minute) if segments["waiting"] else 0)


def summary(segments):
    """'4,900 sent, 100 cancelled': the nonzero segments in words."""
    words = {LOST: "dropped or bounced"}
    parts = [f"{number(segments[key])} {words.get(key, str(key))}" for key, _, _ in SEGMENTS if segments[key]]
    return ", ".join(parts)


def progress(mail, counts, now=None, waiting=""):
    """Everything the request page shows about where a request is, as plain data (the poll's JSON too).

    `waiting`: why its waiting mail waits, when something other than its own state holds it
    (its sender account's daily cap: dbmail.send.caps.waiting_words).
    """
    now = now or timezone.now()
    counts = {s: n for s, n in counts.items() if n}
    segments = {key: sum(counts.get(s, 0) for s in statuses) for key, _, statuses in SEGMENTS}
    total = sum(segments.values())
    handled = segments[E.SENT] + segments[LOST] + segments[E.CANCELLED]
    key = state(mail, counts, now)
    unsent = segments["waiting"] + segments[E.DEFERRED]
    going = key == SENDING
    speed = pace(mail, segments, now) if going else Pace()
    return {
        "status": mail.status,
        "state": key,
        "state_label": LABELS[key],
        "total": total,
        "done": handled,
        "percent": round(100 * handled / total) if total else (100 if key == DONE else 0),
        "segments": [
            {
                "key": k,
                "label": text,
                "n": segments[k],
                "percent": round(100 * segments[k] / total, 2) if total else 0,
            }
            for k, text, _ in SEGMENTS
        ],
        "counts": {s: counts[s] for s in SHOWN if counts.get(s)},
        "summary": summary(segments),
        "line": _line(mail, key, segments, total, waiting if segments["waiting"] + segments[E.DEFERRED] else ""),
        "waiting": waiting if key == SENDING and segments["waiting"] + segments[E.DEFERRED] else "",
        "pace": speed.text,
        "per_minute": round(speed.per_minute, 1) if speed.per_minute else None,
        "eta_seconds": speed.eta_seconds,
        # Poll while anything can still change by itself (a scheduled request starts on its own).
        "active": key in (SCHEDULED, SENDING, HELD),
        "editable": editable(mail) and key != DRAFT,
        "cancellable": mail.status in (*states.REQUEST_TO_EXPAND, FAILED, PAUSED)
        or (mail.status == Status.EXPANDED and bool(unsent)),
        "retryable": any(counts.get(s) for s in states.RETRY.sources),
        "resumable": mail.status in (*states.RETRY_REQUEST.sources, PAUSED),
        "paused_now": mail.status == PAUSED,
        "send_at": mail.send_at.isoformat() if mail.send_at else None,
        "now": now.isoformat(),
    }


def _line(mail, key, segments, total, waiting=""):
    """The status line: one sentence saying where the request is."""
    said = summary(segments)
    if key == PAUSED:
        reason = (mail.paused_reason or "by the reputation guard").rstrip(".")
        return f"Paused: {reason}. Resume it or cancel the rest." + (f" So far: {said}." if total else "")
    if key == SCHEDULED:
        return f"Scheduled: it goes out on {when(mail.send_at)}."
    if key == CANCELLED:
        if not segments[E.SENT] and not segments[LOST]:
            return "Cancelled: nothing was sent."
        return f"Cancelled: {said}."
    if key == DONE:
        return f"Done: {said}." if total else "Done: nobody was left to send it to."
    if key == FAILED:
        return f"Failed: {said}." if total else "Failed before any email was made."
    if key == HELD:
        return "Held: its sender account is inactive." + (f" {said}." if total else "")
    if key == SENDING:
        if not total:
            if mail.status == Status.EXPANDING:
                return "Sending: the emails are being made."
            return "Sending: waiting for the next sending run to start."
        handled = segments[E.SENT] + segments[LOST] + segments[E.CANCELLED]
        text = f"Sending: {number(handled)} of {number(total)} handled ({said})"
        if segments[E.DEFERRED]:
            text += f"; {plural(segments[E.DEFERRED], 'deferred email')} will be tried again later"
        if waiting:
            text += f"; {waiting}"
        return text + "."
    return ""
