"""The states of outbound mail, and every way from one to another.

DESIGN promises one column and one place that changes it. This module is that
place's rulebook: the statuses of a MessageRequest and of a TextOfEmail (the
models take their choices from here), each named transition (the states a
row may be moved from and the state it is moved to), and the groups other
code reads (waiting, final, tracked...). Every writer, the raw-SQL fast path
included, filters by a transition's `sources` and writes its `target`, so a
rule changes here and nowhere else; tests/test_states.py checks the table and
refuses status literals anywhere else in the code.

It imports nothing of the project: the models and the logic both use it.
"""

from dataclasses import dataclass

from django.db import models


class RequestStatus(models.TextChoices):
    DRAFT = "draft"
    QUEUED = "queued"
    EXPANDING = "expanding"
    EXPANDED = "expanded"
    CANCELLED = "cancelled"
    FAILED = "failed"  # expansion hit an error of the request's own; a person fixes it, then retries
    PAUSED = "paused"  # the reputation guard stopped it (too many bounces or complaints); a person resumes or cancels


class EmailStatus(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    DROPPED = "dropped"
    CANCELLED = "cancelled"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


@dataclass(frozen=True)
class Transition:
    """One way between states: rows in one of `sources` may move to `target` (no sources: a new row)."""

    name: str
    sources: tuple
    target: str

    def update(self, queryset, **changes):
        """Move the rows of `queryset` that are in a source state to the target; returns how many moved."""
        return queryset.filter(status__in=self.sources).update(status=self.target, **changes)


R, E = RequestStatus, EmailStatus

# --- A request ---

# Made by the comm panel as a draft; by the admin, the API or code as queued (the model's default).
REQUEST_CREATE_DRAFT = Transition("create a draft", (), R.DRAFT)
REQUEST_CREATE = Transition("create", (), R.QUEUED)
SCHEDULE = Transition("schedule (the panel's send)", (R.DRAFT,), R.QUEUED)
SEND_NOW = Transition("send now (the admin's action)", (R.DRAFT, R.QUEUED), R.QUEUED)
# Due and queued, or expanding under a lease that ran out (its expander died).
START_EXPANSION = Transition("start expansion", (R.QUEUED, R.EXPANDING), R.EXPANDING)
FINISH_EXPANSION = Transition("finish expansion", (R.EXPANDING,), R.EXPANDED)
# Any error of the request's own (its recipient set, parameters, templates) fails it alone, with the reason.
FAIL_EXPANSION = Transition("fail expansion", (R.EXPANDING,), R.FAILED)
# Once the cause is fixed: queued again, and expansion resumes from the checkpoint.
RETRY_REQUEST = Transition("retry a failed request", (R.FAILED,), R.QUEUED)
# The reputation guard (dbmail.track.guard) stops a request that bounces or draws complaints too much:
# nothing more of it is made or sent (its waiting emails are not claimed) until a person resumes it,
# to where it was: still to expand (queued: expansion goes on from its checkpoint) or expanded.
PAUSE_REQUEST = Transition("pause a request (the reputation guard)", (R.QUEUED, R.EXPANDING, R.EXPANDED), R.PAUSED)
RESUME_EXPANSION = Transition("resume a paused request still to expand", (R.PAUSED,), R.QUEUED)
RESUME_SENDING = Transition("resume a paused request", (R.PAUSED,), R.EXPANDED)
CANCEL_REQUEST = Transition(
    "cancel a request", (R.DRAFT, R.QUEUED, R.EXPANDING, R.EXPANDED, R.FAILED, R.PAUSED), R.CANCELLED
)

REQUEST_TRANSITIONS = (
    REQUEST_CREATE_DRAFT,
    REQUEST_CREATE,
    SCHEDULE,
    SEND_NOW,
    START_EXPANSION,
    FINISH_EXPANSION,
    FAIL_EXPANSION,
    RETRY_REQUEST,
    PAUSE_REQUEST,
    RESUME_EXPANSION,
    RESUME_SENDING,
    CANCEL_REQUEST,
)

# Emails are still to be made for these.
REQUEST_TO_EXPAND = (R.QUEUED, R.EXPANDING)
# Nothing goes out for a request in these, whatever its emails say.
REQUEST_DORMANT = (R.DRAFT, R.CANCELLED, R.PAUSED)

# --- An email ---

# Expansion, the outbox and the spool create emails queued, or dropped with the reason when
# they can never be sent (a bad address, a template error, an unknown sender).
ENQUEUE = Transition("enqueue", (), E.QUEUED)
REFUSE = Transition("refuse at creation", (), E.DROPPED)

# A sender claims due emails, and emails whose lease ran out (their sender died).
CLAIM = Transition("claim", (E.QUEUED, E.DEFERRED, E.SENDING), E.SENDING)
# The ad-hoc path takes one specific email, and only one nobody has touched yet.
CLAIM_NOW = Transition("claim now (ad hoc)", (E.QUEUED,), E.SENDING)
# A clean stop gives unattempted emails back in the state they were claimed from.
RELEASE = {
    E.QUEUED: Transition("release to queued", (E.SENDING,), E.QUEUED),
    E.DEFERRED: Transition("release to deferred", (E.SENDING,), E.DEFERRED),
}

# What the SMTP server's answer leads to (dbmail.send.retry decides which, dbmail.send.outcomes writes it).
SEND = Transition("server accepted", (E.SENDING,), E.SENT)
DEFER = Transition("temporary failure", (E.SENDING,), E.DEFERRED)
DROP = Transition("permanent failure", (E.SENDING,), E.DROPPED)
OUTCOMES = {t.target: t for t in (SEND, DEFER, DROP)}

# Human actions (admin, comm panel).
CANCEL = Transition("cancel", (E.QUEUED, E.DEFERRED), E.CANCELLED)
RETRY = Transition("retry now", (E.DEFERRED, E.DROPPED), E.QUEUED)

# Tracking (dbmail.track.apply): an event leads to a state, and moves an email there only when
# that state ranks higher than the email's current one. So final states win, nothing moves
# backwards (a delivered email never becomes "deferred" again), and the order in which events
# arrive does not change where an email ends up.
TRACKING_RANK = {
    E.QUEUED: 0,
    E.SENDING: 0,
    E.DEFERRED: 0,
    E.CANCELLED: 0,
    E.SENT: 1,
    E.DROPPED: 2,
    E.DELIVERED: 3,
    E.BOUNCED: 4,
    E.COMPLAINED: 5,
}


def _tracked(name, target):
    outranked = tuple(s for s in EmailStatus if TRACKING_RANK[s] < TRACKING_RANK[target])
    return Transition(name, outranked, target)


# A "deferred" report means the MTA has the email and retries it itself: it can at most
# confirm "sent" (our own "deferred" would make dbmail_cron send it again).
TRACKED_SENT = _tracked("tracked: the MTA has it", E.SENT)
TRACKED_DROPPED = _tracked("tracked: rejected", E.DROPPED)
TRACKED_DELIVERED = _tracked("tracked: delivered", E.DELIVERED)
TRACKED_BOUNCED = _tracked("tracked: bounced", E.BOUNCED)
TRACKED_COMPLAINED = _tracked("tracked: complained", E.COMPLAINED)
TRACKING = (TRACKED_SENT, TRACKED_DROPPED, TRACKED_DELIVERED, TRACKED_BOUNCED, TRACKED_COMPLAINED)

EMAIL_TRANSITIONS = (
    ENQUEUE,
    REFUSE,
    CLAIM,
    CLAIM_NOW,
    *RELEASE.values(),
    *OUTCOMES.values(),
    CANCEL,
    RETRY,
    *TRACKING,
)

# Claimable once due (next_attempt_at), and cancellable.
WAITING = (E.QUEUED, E.DEFERRED)
# Shown, never stored: waiting mail (and requests still to expand) of an inactive sender account
# is "held": not claimed nor expanded, so neither sent nor dropped, until the account is active
# again or an admin cancels it (dbmail.send.claims, dbmail.intake.expand).
HELD = "held"
# Not done yet: waiting, or held by a sender.
UNFINISHED = (E.QUEUED, E.SENDING, E.DEFERRED)
# Done: only tracking (and an admin's retry of a drop) moves an email on from here; purge may delete it.
FINAL = (E.SENT, E.DROPPED, E.CANCELLED, E.DELIVERED, E.BOUNCED, E.COMPLAINED)
# FINAL, split by whether the SMTP server took the email (a spool file then goes to sent/)...
ACCEPTED = (E.SENT, E.DELIVERED, E.BOUNCED, E.COMPLAINED)
NEVER_SENT = (E.DROPPED, E.CANCELLED)
# ...and by whether it reached its mailbox as far as anyone told us (mailgate's outgoing messages).
SUCCEEDED = (E.SENT, E.DELIVERED, E.COMPLAINED)
FAILED = (E.DROPPED, E.CANCELLED, E.BOUNCED)
# Only a tracking event leads here: what the MTA reported back.
TRACKED = (E.DELIVERED, E.BOUNCED, E.COMPLAINED)
# A tracking event that moves an email here records its diagnostic as the email's last error.
KEEPS_DIAGNOSTIC = (E.DROPPED, E.BOUNCED, E.COMPLAINED)
