"""Whose fault a failed attempt was, what becomes of the email, and when the next attempt is due.

Only an answer about one recipient decides that recipient's fate: a 5xx to
RCPT TO, or a 5xx after the final dot of a transaction with that one
recipient (we send one recipient per transaction), drops the email; a 4xx
there defers it, and counts as one of its attempts.

Everything that concerns the connection, the session or the sender is never
the recipient's fault (a "session" fault): a connection refused, a stall or
a disconnect before the whole message went out, a 421 at any stage, an error
to the greeting, EHLO, STARTTLS or AUTH, to MAIL FROM (the relay refuses our
sender or wants AUTH), to DATA once the recipient was accepted, and a 503
(bad sequence of commands, which is our own fault). Such an email is
deferred and the attempt is not counted against it; the sender reconnects
(dbmail.send.loop).

In between: when the whole message went out but the answer never came (the
connection dropped, or the answer took longer than EMAIL_TIMEOUT), the
outcome is unknown and the message may have been delivered. The email is
deferred and retried, the attempt counts, and it is recorded as "outcome
unknown (possibly delivered)" so that a duplicate can be told from a failure.

A reply that is no SMTP reply (a garbled line, which smtplib reads as -1) or not one a
recipient can get (3xx, 6xx) is never the recipient's fault either: the session's, or after
the final dot an unknown outcome. Only 2xx to 5xx codes are kept in the log.

An email that cannot be built (a header with a line break, an address that
cannot be written) is dropped with the reason: retrying cannot help.
"""

import smtplib
import socket
from dataclasses import dataclass
from datetime import timedelta

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.content.addresses import AddressError
from dbmail.send.smtp import AckLost

SENT, DEFERRED, DROPPED = states.SEND.target, states.DEFER.target, states.DROP.target

SESSION_STAGES = ("connect", "ehlo", "starttls", "auth")
STAGE_WORDS = {
    "connect": "connecting",
    "ehlo": "EHLO",
    "starttls": "STARTTLS",
    "auth": "AUTH",
    "mail": "MAIL FROM",
    "rcpt": "RCPT TO",
    "data": "DATA",
    "message": "the end of the message",
}


@dataclass(frozen=True)
class Outcome:
    status: str  # the target of one of states.OUTCOMES: sent, deferred or dropped
    code: int | None = None
    text: str = ""
    reset_connection: bool = False  # the connection is unusable; reopen before the next message
    session: bool = False  # the connection, session or sender failed, not the recipient: not an attempt
    stage: str = ""  # where in the conversation it failed (SESSION_STAGES: before any message)
    possibly_delivered: bool = False  # the message went out and its answer was lost

    @property
    def counted(self):
        """Whether this outcome counts as one of the email's attempts."""
        return not self.session

    def __post_init__(self):
        if self.status not in states.OUTCOMES:
            raise ValueError(f"an attempt's outcome is one of {', '.join(states.OUTCOMES)}, not {self.status!r}")


def _reply_text(resp):
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)


def _reply_code(code):
    """`code` if it can be an SMTP reply's (RFC 5321: 2xx to 5xx), else None (a garbled line reads as -1)."""
    return code if isinstance(code, int) and 200 <= code < 600 else None


def by_code(code, text, stage=""):
    """A recipient's answer: 2xx sent, 4xx deferred, 5xx dropped; 421 and 503 are the session's.

    Anything else (a garbled line, a 3xx or 6xx where a recipient's answer belongs) says nothing about
    the recipient and leaves the conversation out of step: the session's fault, and the connection is
    reset. After the final dot the whole message had gone out, so the outcome is unknown, as when the
    answer is lost.
    """
    if _reply_code(code) is None or 300 <= code < 400:
        what = f"{code} {text}" if isinstance(code, int) and code > 0 else text
        reply = f"not an SMTP reply to {STAGE_WORDS.get(stage, stage or 'a command')}: {what!r}"
        if stage == "message":
            text = f"outcome unknown (possibly delivered): {reply}"
            return Outcome(DEFERRED, _reply_code(code), text, True, stage=stage, possibly_delivered=True)
        return session(_reply_code(code), reply, reset=True, stage=stage)
    if 200 <= code < 300:
        return Outcome(SENT, code, text)
    if code in (421, 503):
        return session(code, text, reset=True, stage=stage)
    if 400 <= code < 500:
        return Outcome(DEFERRED, code, text, stage=stage)
    return Outcome(DROPPED, code, text, stage=stage)


def session(code, text, reset=False, stage=""):
    """A failure of the connection, the session or the sender: deferred, not counted."""
    if code == 503:
        text = f"{text} (a command out of sequence: our side's fault; the session is reset)"
    if code is not None and _reply_code(code) is None:
        # A garbled reply (-1) to the greeting, EHLO, MAIL FROM...: the log's code column takes SMTP codes only.
        code, reset = None, True
    return Outcome(DEFERRED, code, text, reset_connection=reset or code in (421, 503), session=True, stage=stage)


def classify(exc):
    """The outcome of an attempt that raised `exc`."""
    stage = getattr(exc, "stage", None) or ""
    words = STAGE_WORDS.get(stage, stage)
    if isinstance(exc, AckLost):
        return Outcome(
            DEFERRED, None, f"outcome unknown (possibly delivered): {exc}", True, stage=stage, possibly_delivered=True
        )
    if isinstance(exc, AddressError):
        return Outcome(DROPPED, None, str(exc))
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, resp = next(iter(exc.recipients.values()), (None, b""))
        return by_code(code or 550, _reply_text(resp), "rcpt")
    if isinstance(exc, smtplib.SMTPResponseException) and stage == "message":
        return by_code(exc.smtp_code, _reply_text(exc.smtp_error), stage)  # after the final dot: this message
    if isinstance(exc, smtplib.SMTPSenderRefused) and exc.smtp_code == 552:
        # The answer to MAIL FROM ... SIZE=n (RFC 1870): this message is bigger than the server takes, ever.
        text = f"the message is too big for the server: {exc.smtp_code} {_reply_text(exc.smtp_error)}"
        return Outcome(DROPPED, exc.smtp_code, text, stage=stage)
    if isinstance(exc, smtplib.SMTPResponseException):
        # The greeting, EHLO, STARTTLS, AUTH, MAIL FROM or DATA: the server or our sender, never the recipient.
        code, text = exc.smtp_code, _reply_text(exc.smtp_error)
        said = f"{code} {text}" if _reply_code(code) else f"not an SMTP reply: {text!r}"
        return session(code, f"{words}: {said}".strip(), reset=stage in SESSION_STAGES, stage=stage)
    if isinstance(exc, (OSError, smtplib.SMTPException)):
        kind = "timeout" if isinstance(exc, (socket.timeout, TimeoutError)) else type(exc).__name__
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            kind = "disconnected"
        where = f" ({words})" if words else ""
        return session(None, f"{kind}{where}: {exc}", reset=True, stage=stage)
    # Anything else came from the message itself (a header with a newline...): retrying cannot
    # help, and it must not hold up the rest.
    return Outcome(DROPPED, None, f"cannot build message: {type(exc).__name__}: {exc}")


def backoff(attempts, email=None):
    """Delay before attempt number `attempts + 1`: base doubling per attempt, capped.

    Spool mail (files and the queue table) keeps the seed's own pace: a fixed DBMAIL_SPOOL_RETRY_SECONDS.
    """
    if _spooled(email):
        return timedelta(seconds=conf.DBMAIL_SPOOL_RETRY_SECONDS)
    base = conf.DBMAIL_RETRY_BASE_SECONDS
    delay = base * 2 ** min(max(attempts - 1, 0), 30)
    return timedelta(seconds=min(delay, conf.DBMAIL_RETRY_MAX_SECONDS))


def give_up(outcome, attempts, email=None):
    """A deferral past the attempt budget (DBMAIL_SPOOL_MAX_ATTEMPTS for spool mail) becomes a drop.

    A session fault is not an attempt, so it never uses up the budget.
    """
    if outcome.status != DEFERRED or not outcome.counted:
        return outcome
    budget = conf.DBMAIL_SPOOL_MAX_ATTEMPTS if _spooled(email) else conf.DBMAIL_MAX_ATTEMPTS
    if attempts >= budget:
        return Outcome(DROPPED, outcome.code, f"too many attempts ({attempts}); last: {outcome.text}")
    return outcome


def _spooled(email):
    """Spool mail: a spool file's item or a queue table's row (seed 003's pace and budget apply).

    The reverse one-to-ones are cached on the instance, so backoff after give_up costs no query.
    """
    if email is None:
        return False
    return getattr(email, "spool_item", None) is not None or getattr(email, "table_item", None) is not None
