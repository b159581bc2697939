"""How a failed attempt is classified, and when the next one is due.

Temporary (4xx, connection refused, timeout, disconnect): deferred with
backoff. Permanent (5xx, a message that cannot be built, too many attempts):
dropped with the reason. A connection-level failure also says the connection
must be opened again before the next message.
"""

import smtplib
import socket
from dataclasses import dataclass
from datetime import timedelta

from dbmail import states
from dbmail.conf import settings as conf

SENT, DEFERRED, DROPPED = states.SEND.target, states.DEFER.target, states.DROP.target


@dataclass(frozen=True)
class Outcome:
    status: str  # the target of one of states.OUTCOMES: sent, deferred or dropped
    code: int | None = None
    text: str = ""
    reset_connection: bool = False  # the connection is unusable; reopen before the next message
    server_down: bool = False  # nothing can be sent on this server now; defer the rest of the batch

    def __post_init__(self):
        if self.status not in states.OUTCOMES:
            raise ValueError(f"an attempt's outcome is one of {', '.join(states.OUTCOMES)}, not {self.status!r}")


def _reply_text(resp):
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)


def by_code(code, text):
    if 200 <= code < 300:
        return Outcome(SENT, code, text)
    if 400 <= code < 500:
        # 421 means the server is closing the connection.
        return Outcome(DEFERRED, code, text, reset_connection=code == 421)
    return Outcome(DROPPED, code, text)


def classify(exc):
    """The outcome of an attempt that raised `exc`."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, resp = next(iter(exc.recipients.values()), (None, b""))
        return by_code(code or 550, _reply_text(resp))
    if isinstance(exc, (smtplib.SMTPAuthenticationError, smtplib.SMTPConnectError, smtplib.SMTPHeloError)):
        # Our account or the server is at fault, not this message.
        return Outcome(DEFERRED, exc.smtp_code, f"{type(exc).__name__}: {_reply_text(exc.smtp_error)}", True, True)
    if isinstance(exc, smtplib.SMTPResponseException):
        return by_code(exc.smtp_code, _reply_text(exc.smtp_error))
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return Outcome(DEFERRED, None, f"disconnected: {exc}", reset_connection=True)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Outcome(DEFERRED, None, f"timeout: {exc}", reset_connection=True)
    if isinstance(exc, (ConnectionError, OSError, smtplib.SMTPException)):
        return Outcome(DEFERRED, None, f"{type(exc).__name__}: {exc}", reset_connection=True)
    # Anything else came from the message itself (a header with a newline, an unencodable
    # address...): retrying cannot help, and it must not hold up the rest.
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
    """A deferral past the attempt budget (DBMAIL_SPOOL_MAX_ATTEMPTS for spool mail) becomes a drop."""
    if outcome.status != DEFERRED:
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
