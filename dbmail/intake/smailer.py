"""The outbox per sender account, as seed 003's smailer shows it: `queue` and `send`.

One line per waiting email:

    17.10.2011000011_BB1C7C8F5EC83BC7: (foo@example.com => boo@hisorhermail.com)

the email's time (a spool item's fld_time, otherwise when the email was
created, in TIME_ZONE) as dd.mm.yyyy directly followed by HHMMSS, an
underscore, the email's queue id (the first 16 hex digits of the SHA-256 of
its Message-ID: stable, and unique in practice), then sender => recipient.
"""

import hashlib

from django.db.models import Q
from django.utils import timezone

from dbmail import states
from dbmail.exceptions import UnknownSender
from dbmail.intake import outbox
from dbmail.models import SenderAccount, TextOfEmail
from dbmail.send import loop as sending

ALL = "@"


def scope(sender=None):
    """The emails of `sender` (an account's address; "@", "" or None: every sender), as a Q."""
    if not sender or sender == ALL:
        return Q()
    address = sender.strip().lower()
    if SenderAccount.objects.filter(address__iexact=address).exists():
        return Q(account__address__iexact=address)
    if address in outbox.site_addresses():
        return Q(account__isnull=True, envelope_sender__iexact=address)
    raise UnknownSender(f"{sender!r} is not a sender account (nor the site's own address)")


def waiting(sender=None):
    """Queued and deferred emails of `sender`, oldest first."""
    return (
        TextOfEmail.objects.filter(scope(sender), status__in=states.WAITING)
        .select_related("account", "spool_item")
        .order_by("created_at", "pk")
    )


def queue_id(email):
    return hashlib.sha256(email.message_id.encode()).hexdigest()[:16].upper()


def line(email):
    """The email's queue line (see the module's docstring)."""
    item = getattr(email, "spool_item", None)
    when = timezone.localtime(item.fld_time if item else email.created_at)
    sender = email.account.address if email.account_id else email.envelope_sender
    return f"{when:%d.%m.%Y%H%M%S}_{queue_id(email)}: ({sender} => {email.to_address})"


def send(sender=None, on_outcome=None):
    """Send every waiting email of `sender` now, whatever its retry schedule; returns a SendResult.

    Each email is tried once: one deferred again keeps its new schedule rather than being
    retried in a loop, since only rows untouched since the start are claimed.
    """
    started = timezone.now()
    only = scope(sender) & Q(status_changed_at__lt=started)
    return sending.Sender(scope=only, on_outcome=on_outcome).run()
