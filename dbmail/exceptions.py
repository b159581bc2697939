"""Every error dbmail raises on purpose: one base class, and each member also the built-in or Django class it means.

    try:
        outbox.send_now(to=..., from_email=address)
    except DbmailError:       # anything dbmail refused or could not do
        ...
    except ValueError:        # or the general kind: UnknownSender is a ValueError too
        ...

The modules that raise them keep their names (dbmail.intake.outbox.UnknownSender,
dbmail.content.rendering.RenderError, ...), so callers may import either way.
mailgate's errors (mailgate.exceptions) derive from DbmailError as well.
"""

import smtplib

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db import DatabaseError


class DbmailError(Exception):
    """The base of every error raised on purpose by dbmail and mailgate."""


# --- configuration ---


class ConfigurationError(DbmailError, ImproperlyConfigured):
    """A setting that cannot be used; the message names it and says why."""


class UnknownSite(DbmailError, ValueError):
    """The --sid names no configured database."""


# --- content and intake: input that cannot be used ---


class RenderError(DbmailError, ValueError):
    """A subject or body template that cannot be compiled or rendered; the message says where."""


class RenderLimitExceeded(RenderError):
    """A template that would make too much text or loop too often (dbmail.content.template_limits); in words.

    Expansion fails the whole request with it, rather than dropping one recipient: it usually means
    the template, and each further recipient would cost the same time for nothing.
    """


class UnknownRecipientSet(DbmailError, LookupError):
    """A request names a recipient set no code registered."""


class RecipientSetError(DbmailError, ValueError):
    """A recipient set could not list its recipients (parameters it cannot use, a bug in its function); in words."""


class RequestFailed(DbmailError):
    """Expanding one request failed; the request is marked failed with the reason, nothing else is affected."""

    def __init__(self, request_id, reason):
        super().__init__(f"request #{request_id} failed: {reason}")
        self.request_id = request_id
        self.reason = reason


class CSVError(DbmailError, ValueError):
    """The file as a whole cannot be used (encoding, no header, no email column)."""


class UnknownSender(DbmailError, ValueError):
    """The From address (or SENDER) is neither a configured sender account nor the site's own address."""


class SpoolFormatError(DbmailError, ValueError):
    """A spool file that is not a valid <list> of <item>s."""


class SpoolError(DbmailError, OSError):
    """The spool directory cannot be used (missing or unreadable)."""


class QueueTableError(DbmailError, RuntimeError):
    """The queue table cannot be used (DBMAIL_SMAILER_TABLE missing, a column missing, its database unknown)."""


# --- sending and tracking: services that cannot be reached, events and requests refused ---


class Unreachable(DbmailError, ConnectionError):
    """The database or the SMTP server could not be reached at all."""


class DatabaseUnreachable(Unreachable):
    """The database could not be reached, or its connection broke during the run."""


class SendingProcessFailed(DbmailError, RuntimeError):
    """A child of a run sending with several processes died or failed (dbmail.ops.processes); in words."""


class DatabaseLost(DbmailError, DatabaseError):
    """The database connection broke during a send run; `leftovers` is what the run still held.

    `leftovers` (dbmail.send.recovery.Leftovers) gives its outcomes and claims back
    once the database answers again; `error` is the database's own error.
    """

    def __init__(self, error, leftovers=None):
        super().__init__(" ".join(str(error).split()) or type(error).__name__)
        self.error = error
        self.leftovers = leftovers


class DestinationGroupsError(DbmailError, ValueError):
    """DBMAIL_DESTINATION_GROUPS cannot be used (dbmail.send.destinations); the message says which part and why."""


class AddressError(DbmailError, ValueError):
    """An address that cannot go into an envelope; the message says why, in words."""


class NeedsSMTPUTF8(AddressError):
    """The address has a UTF-8 local part and the server does not offer SMTPUTF8 (RFC 6531)."""


# The SMTP conversation's own failures, each also the smtplib error callers already catch.


class DataRefused(DbmailError, smtplib.SMTPDataError):
    """The server refused the DATA command: the recipients were accepted, nothing of the message went out."""

    stage = "data"


class MessageRefused(DbmailError, smtplib.SMTPDataError):
    """The server refused the message after its final dot."""

    stage = "message"


class AckLost(DbmailError, smtplib.SMTPServerDisconnected):
    """The whole message went out (final dot written) but the server's answer never came: maybe delivered."""

    stage = "message"


class QueueUnavailable(DbmailError, ConnectionError):
    """The tracking queue cannot take or hand out events right now; try again later."""


class InvalidEvent(DbmailError, ValueError):
    """A tracking event that cannot be used; the message says which field and why."""


class WebhookMappingError(DbmailError, ValueError):
    """TRACKING_WEBHOOK_MAPPINGS does not describe usable mappings; the message says where."""


class WebhookRefused(DbmailError, SuspiciousOperation):
    """A tracking callback that is not accepted; `status` is the HTTP answer it gets (400, 401, 409...)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class IdempotencyKeyReused(DbmailError, ValueError):
    """The sending API's Idempotency-Key was used before with another payload; `send` is what it made then."""

    def __init__(self, message, send=None):
        super().__init__(message)
        self.send = send


class TooLate(DbmailError, RuntimeError):
    """A change to a request that expansion took meanwhile: nothing was changed (the comm panel's edit)."""


# --- DKIM keys and the DNS checks ---


class DkimError(DbmailError, ValueError):
    """A DKIM key that cannot be made, rotated or retired as asked; the message says why."""


class DNSLookupFailed(DbmailError, ConnectionError):
    """The DNS gave no answer (a timeout, no server): a DNS check cannot judge that record."""
