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

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation


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


class UnknownRecipientSet(DbmailError, LookupError):
    """A request names a recipient set no code registered."""


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
