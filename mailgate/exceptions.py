"""mailgate's errors: members of dbmail's family (dbmail.exceptions), so `except DbmailError` catches them too."""

from django.core.exceptions import PermissionDenied

from dbmail.exceptions import DbmailError


class MailgateError(DbmailError):
    """The base of every error raised on purpose by mailgate."""


class NotHeld(MailgateError):
    """The message is no longer held (someone else decided it first).

    No built-in class means "another user changed it meanwhile", so this one has only its family.
    """


class MailboxError(MailgateError, ConnectionError):
    """The IMAP server could not be reached or refused us; the message says which account."""


class NoSuchAddress(MailgateError, LookupError):
    """A list resolver's answer: the address its list matched belongs to nobody."""


class AddressTaken(MailgateError, PermissionDenied):
    """A mailbox account's address is not its to use (mailgate.mailboxes.identity.address_refusal says why)."""


class TooManyParts(MailgateError):
    """The email parser was about to make more MIME parts than mailgate.gate.parsing.MAX_PARTS.

    Raised and caught inside the parsing module: such a message is read by its header only.
    """
