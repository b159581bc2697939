"""mailgate's health checks (the IMAP poller and the gate), added to dbmail_status by MailgateConfig.ready().

Also what the gate records of each answer it gives the MTA (GateHeartbeat),
since a gate that keeps answering 75 leaves nothing else behind.
"""

import socket
from datetime import timedelta

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F

from dbmail.ops import health
from dbmail.ops.health import CRITICAL, OK, WARNING, Finding, human
from mailgate.conf import settings as conf
from mailgate.models import GateHeartbeat, InboundMessage, MailFolder

EX_TEMPFAIL = 75
_MIN_INTERVAL = 60  # seconds: a folder polled "every round" (after_read_timeout 0) is judged as if every minute


def register():
    health.register("imap poller", check_imap)
    health.register("gate", check_gate)


# --- The gate's answers --------------------------------------------------------------------------


def record_answer(result, now=None):
    """Count one answer to the MTA on this host; never raises (the answer itself matters more)."""
    from django.utils import timezone

    database_down = result.inbound_id is None and result.message.startswith("temporary failure (database)")
    if database_down:  # nothing can be written; trying again would only make the MTA wait longer
        return
    now = now or timezone.now()
    host = socket.gethostname()
    if result.code == EX_TEMPFAIL:
        changes = dict(
            last_run_at=now,
            last_tempfail_at=now,
            last_tempfail=result.message[:2000],
            tempfails_in_a_row=F("tempfails_in_a_row") + 1,
            tempfails_total=F("tempfails_total") + 1,
        )
    else:
        changes = dict(last_run_at=now, last_accepted_at=now, tempfails_in_a_row=0)
    try:
        with transaction.atomic():
            if not GateHeartbeat.objects.filter(host=host).update(**changes):
                GateHeartbeat.objects.create(host=host, **_initial(changes))
    except IntegrityError:  # another gate process on this host created the row first
        try:
            GateHeartbeat.objects.filter(host=host).update(**changes)
        except DatabaseError:
            pass
    except DatabaseError:
        pass


def _initial(changes):
    """The changes for a new row: each counter's first increment is 1."""
    return {k: (1 if hasattr(v, "resolve_expression") else v) for k, v in changes.items()}


def check_gate(now, options):
    """The gate takes mail: no run of 75s (temporary failure), no recent message failing its processing."""
    window = timedelta(seconds=conf.MAILGATE_HEALTH_TEMPFAIL_WINDOW_SECONDS)
    grades, words = [OK], []
    beats = list(GateHeartbeat.objects.order_by("host"))
    for hb in beats:
        if not hb.last_tempfail_at or now - hb.last_tempfail_at > window:
            continue
        in_a_row = hb.tempfails_in_a_row
        if in_a_row >= conf.MAILGATE_HEALTH_TEMPFAILS_CRITICAL:
            grades.append(CRITICAL)
            words.append(
                f"the gate on {hb.host} answered 75 (temporary failure) {in_a_row} times in a row, "
                f"last {human(now - hb.last_tempfail_at)} ago: {hb.last_tempfail[:200]}"
            )
        elif in_a_row:
            grades.append(WARNING)
            words.append(
                f"the gate on {hb.host} last answered 75 {human(now - hb.last_tempfail_at)} ago: {hb.last_tempfail[:200]}"
            )
    failed = InboundMessage.objects.filter(status=InboundMessage.Status.FAILED, received_at__gte=now - window)
    n_failed = failed.count()
    if n_failed:
        grades.append(WARNING)
        words.append(
            f"{n_failed} inbound message(s) failed processing in the last {human(window)} "
            f"(kept; process them again in the admin), e.g. #{failed.order_by('-received_at').first().pk}"
        )
    held_words, n_held = _held(now, grades)
    state = health.worst(*grades)
    if state == OK:
        accepted = max((hb.last_accepted_at for hb in beats if hb.last_accepted_at), default=None)
        words.append(f"last message accepted {human(now - accepted)} ago" if accepted else "no message yet")
    words += held_words
    details = {
        "failed_messages": n_failed,
        "held_messages": n_held,
        "hosts": {hb.host: hb.tempfails_in_a_row for hb in beats},
    }
    return Finding("gate", state, "; ".join(words), details)


def _held(now, grades):
    """What waits for a moderator: words for the summary and the count; a warning once one waits too long."""
    from mailgate.gate.proof import NOT_PROVEN  # the gate's modules stay out of every command's start-up

    held = InboundMessage.objects.filter(status=InboundMessage.Status.HELD)
    n_held = held.count()
    if not n_held:
        return [], 0
    oldest = held.order_by("received_at").values_list("received_at", flat=True).first()
    words = f"{n_held} message(s) held for moderation, the oldest for {human(now - oldest)}"
    # Members' posts that prove nothing are held too (mailgate.gate.proof): say how to have them proven.
    unproven = held.filter(note__contains=NOT_PROVEN).count()
    if unproven and not conf.MAILGATE_TRUSTED_AUTHSERV_IDS:
        words += (
            f" ({unproven} from members whose address is not proven: unsigned mail needs the MTA's "
            "Authentication-Results, MAILGATE_TRUSTED_AUTHSERV_IDS, docs/mta.md)"
        )
    if now - oldest > timedelta(hours=conf.MAILGATE_HEALTH_HELD_WARNING_HOURS):
        grades.append(WARNING)
    return [words], n_held


# --- The IMAP poller -----------------------------------------------------------------------------


def check_imap(now, options):
    """Every enabled folder is polled about as often as its interval says, and its last poll worked."""
    folders = list(MailFolder.objects.filter(enabled=True, account__enabled=True).select_related("account__profile"))
    if not folders:
        return Finding("imap poller", OK, "no IMAP folder enabled", {"folders": 0})
    warn_n, crit_n = conf.MAILGATE_HEALTH_IMAP_WARNING_INTERVALS, conf.MAILGATE_HEALTH_IMAP_CRITICAL_INTERVALS
    grades, words, late = [OK], [], []
    for folder in folders:
        if not folder.exists_on_server:
            grades.append(WARNING)
            words.append(f"{folder} is enabled but no longer exists on the server")
            continue
        interval = max(folder.after_read_timeout(), _MIN_INTERVAL)
        since = folder.last_polled_at or folder.account.created_at
        overdue = (now - since).total_seconds()
        state = grade_intervals(overdue, interval, warn_n, crit_n)
        if state != OK:
            seen = f"last polled {human(now - folder.last_polled_at)} ago" if folder.last_polled_at else "never polled"
            words.append(f"{folder}: {seen} (every {int(folder.after_read_timeout())}s expected)")
            late.append(folder.pk)
        elif folder.last_error:
            state = WARNING
            words.append(f"{folder}: the last poll failed: {folder.last_error[:200]}")
        grades.append(state)
    state = health.worst(*grades)
    if state == OK:
        words.append(f"{len(folders)} folder(s) polled on time")
    return Finding("imap poller", state, "; ".join(words), {"folders": len(folders), "late": late})


def grade_intervals(overdue_seconds, interval, warning_intervals, critical_intervals):
    return health.grade(overdue_seconds, interval * warning_intervals, interval * critical_intervals)
