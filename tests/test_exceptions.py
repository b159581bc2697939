"""One family of errors: every error dbmail and mailgate raise on purpose is a DbmailError and the class it means."""

import importlib
import inspect
import pkgutil

import pytest
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db import DatabaseError

import dbmail
import mailgate
from dbmail import exceptions
from dbmail.content import addresses, csvmerge, recipients, rendering
from dbmail.intake import expand, outbox, smailer, spool
from dbmail.intake.api import transactional
from dbmail.ops import cron, dkimkeys, dnscheck, sites
from dbmail.send import destinations, recovery, smtp
from dbmail.track import apply, queue, webhooks
from mailgate import exceptions as mailgate_exceptions
from mailgate.gate import moderation
from mailgate.mailboxes import imap


@pytest.mark.parametrize(
    "error,kind",
    [
        (exceptions.ConfigurationError, ImproperlyConfigured),
        (exceptions.UnknownSite, ValueError),
        (exceptions.RenderError, ValueError),
        (exceptions.RenderLimitExceeded, exceptions.RenderError),
        (exceptions.UnknownRecipientSet, LookupError),
        (exceptions.RecipientSetError, ValueError),
        (exceptions.CSVError, ValueError),
        (exceptions.UnknownSender, ValueError),
        (exceptions.SpoolFormatError, ValueError),
        (exceptions.SpoolError, OSError),
        (exceptions.QueueTableError, RuntimeError),
        (exceptions.Unreachable, ConnectionError),
        (exceptions.DatabaseUnreachable, exceptions.Unreachable),
        (exceptions.DatabaseLost, DatabaseError),
        (exceptions.SendingProcessFailed, RuntimeError),
        (exceptions.AddressError, ValueError),
        (exceptions.NeedsSMTPUTF8, exceptions.AddressError),
        (exceptions.QueueUnavailable, ConnectionError),
        (exceptions.InvalidEvent, ValueError),
        (exceptions.DestinationGroupsError, ValueError),
        (exceptions.WebhookRefused, SuspiciousOperation),
        (exceptions.WebhookMappingError, ValueError),
        (exceptions.IdempotencyKeyReused, ValueError),
        (exceptions.DkimError, ValueError),
        (exceptions.DNSLookupFailed, ConnectionError),
        (mailgate_exceptions.MailboxError, ConnectionError),
        (mailgate_exceptions.NotHeld, mailgate_exceptions.MailgateError),
    ],
)
def test_each_error_is_of_the_family_and_of_the_kind_it_means(error, kind):
    assert issubclass(error, exceptions.DbmailError) and issubclass(error, kind)
    raised = error(409, "said why") if error is exceptions.WebhookRefused else error("said why")
    assert str(raised) == "said why"


def test_the_raising_modules_keep_their_names_for_the_same_classes():
    assert outbox.UnknownSender is smailer.UnknownSender is exceptions.UnknownSender  # once, not twice
    assert (spool.SpoolError, spool.FormatError) == (exceptions.SpoolError, exceptions.SpoolFormatError)
    assert rendering.RenderError is exceptions.RenderError
    assert rendering.RenderLimitExceeded is exceptions.RenderLimitExceeded
    assert recipients.UnknownRecipientSet is exceptions.UnknownRecipientSet
    assert recipients.RecipientSetError is exceptions.RecipientSetError
    assert expand.RequestFailed is exceptions.RequestFailed
    assert str(exceptions.RequestFailed(5, "said why")) == "request #5 failed: said why"
    assert csvmerge.CSVError is exceptions.CSVError
    assert (sites.UnknownSite, cron.Unreachable) == (exceptions.UnknownSite, exceptions.Unreachable)
    assert (apply.InvalidEvent, queue.QueueUnavailable) == (exceptions.InvalidEvent, exceptions.QueueUnavailable)
    assert webhooks.Refused is exceptions.WebhookRefused
    assert (addresses.AddressError, addresses.NeedsSMTPUTF8) == (exceptions.AddressError, exceptions.NeedsSMTPUTF8)
    assert (smtp.AckLost, smtp.DataRefused, smtp.MessageRefused) == (
        exceptions.AckLost,
        exceptions.DataRefused,
        exceptions.MessageRefused,
    )
    assert recovery.DatabaseLost is exceptions.DatabaseLost
    assert destinations.GroupsError is exceptions.DestinationGroupsError
    assert transactional.KeyReused is exceptions.IdempotencyKeyReused
    assert (dnscheck.LookupFailed, dkimkeys.DkimError) == (exceptions.DNSLookupFailed, exceptions.DkimError)
    assert (moderation.NotHeld, imap.MailboxError) == (mailgate_exceptions.NotHeld, mailgate_exceptions.MailboxError)


def test_the_smtp_conversations_errors_are_smtplibs_too():
    import smtplib

    for error, kind in (
        (exceptions.DataRefused, smtplib.SMTPDataError),
        (exceptions.MessageRefused, smtplib.SMTPDataError),
        (exceptions.AckLost, smtplib.SMTPServerDisconnected),
    ):
        assert issubclass(error, exceptions.DbmailError) and issubclass(error, kind)
    assert exceptions.DataRefused(554, b"no").smtp_code == 554 and exceptions.DataRefused.stage == "data"


def _modules(package):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if ".migrations" not in info.name:
            yield importlib.import_module(info.name)


def test_no_module_defines_an_error_outside_the_family():
    strays = [
        f"{module.__name__}.{name}"
        for package in (dbmail, mailgate)
        for module in _modules(package)
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__ == module.__name__
        and not issubclass(value, exceptions.DbmailError)
    ]
    assert strays == []
