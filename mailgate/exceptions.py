"""mailgate's errors: members of dbmail's family (dbmail.exceptions), so `except DbmailError` catches them too."""

from dbmail.exceptions import DbmailError


class MailgateError(DbmailError):
    """The base of every error raised on purpose by mailgate."""


class NotHeld(MailgateError):
    """The message is no longer held (someone else decided it first).

    No built-in class means "another user changed it meanwhile", so this one has only its family.
    """


class MailboxError(MailgateError, ConnectionError):
    """The IMAP server could not be reached or refused us; the message says which account."""
