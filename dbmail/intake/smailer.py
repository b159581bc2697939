"""The outbox per sender account, as seed 003's smailer shows it: `queue` and `send`.

One line per waiting mail:

    17.10.2011000011_BB1C7C8F5EC83BC7: (foo@example.com => boo@hisorhermail.com)

the mail's time (a spool item's or table row's fld_time, otherwise when the
email was created, in TIME_ZONE) as dd.mm.yyyy directly followed by HHMMSS,
an underscore, its queue id (for an email, the first 16 hex digits of the
SHA-256 of its Message-ID: stable, and unique in practice), then sender =>
recipient. `queue` lists all that waits: the outbox's queued and deferred
emails, then the queue table's waiting rows and the spool directory's files
not taken in yet (read, never taken: their queue id, of the row or the file's
item, is replaced by the email's once they are taken in).
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from dbmail import states
from dbmail.exceptions import UnknownSender
from dbmail.intake import outbox, spool, tablequeue
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
        .select_related("account", "spool_item", "table_item")
        .order_by("created_at", "pk")
    )


def queue_id(email):
    return hashlib.sha256(email.message_id.encode()).hexdigest()[:16].upper()


def line(email):
    """The email's queue line (see the module's docstring)."""
    item = getattr(email, "spool_item", None) or getattr(email, "table_item", None)
    sender = email.account.address if email.account_id else email.envelope_sender
    return _line(item.fld_time if item else email.created_at, queue_id(email), sender, email.to_address)


def _line(when, qid, sender, address):
    # A row's fld_time that does not parse is shown as it is (taking the row in drops it, saying so).
    shown = f"{timezone.localtime(when):%d.%m.%Y%H%M%S}" if isinstance(when, datetime) else str(when)
    return f"{shown}_{qid}: ({sender} => {address})"


def lines(sender=None):
    """Every queue line of `sender` (see the module's docstring): the outbox, then the table, then the files."""
    emails = waiting(sender)  # checks SENDER first
    address = None if not sender or sender == ALL else sender.strip().lower()
    for email in emails.iterator(chunk_size=2000):
        yield line(email)
    for row in tablequeue.waiting_rows(address):
        yield _line(row.fld_time, row.queue_id, row.sender, row.address)
    for waiting_item in spool.waiting_items():
        item = waiting_item.item
        if address is None or item.sender.strip().lower() == address:
            yield _line(item.fld_time, waiting_item.queue_id, item.sender, item.address)


def send(sender=None, on_outcome=None):
    """Send every waiting email of `sender` now, whatever its retry schedule; returns a SendResult.

    Each email is tried once: one deferred again keeps its new schedule rather than being
    retried in a loop, since only rows untouched since the start are claimed.
    """
    started = timezone.now()
    only = scope(sender) & Q(status_changed_at__lt=started)
    return sending.Sender(scope=only, on_outcome=on_outcome).run()


@dataclass
class Cycle:
    """What one cycle did: the table's and the spool's intake, the send's result, and the write-backs."""

    table_taken: tablequeue.TakeResult
    spool_taken: spool.IntakeResult
    result: object
    table_written: tablequeue.WriteResult
    spool_settled: spool.SettleResult


def cycle(send, on_intake=None):
    """Take in the queue table and the spool, `send()`, then write outcomes back to both.

    The order every sending command keeps (dbmail_cron, `smailer send`): rows and files
    become emails before the send, so their mail goes in the same run, and get their
    statuses after it. Either half does nothing when its setting is empty.
    `on_intake(table_taken, spool_taken)` is called before sending (to report errors first).
    """
    table_taken = tablequeue.take()
    spool_taken, result, settled = spool.cycle(
        send, on_intake=(lambda taken: on_intake(table_taken, taken)) if on_intake else None
    )
    return Cycle(table_taken, spool_taken, result, tablequeue.write_back(), settled)
