"""Removing old inbound messages that need nothing more (their bounce rows go with them).

Held, raw and failed messages are never removed: they wait for a person.
Nor are the bytes of messages read from mailbox folders: they are those
messages' raw RFC 822 and go when the mailbox message is deleted.
"""

from django.db import transaction
from django.utils import timezone

from mailgate.models import InboundMessage

KEPT = (InboundMessage.Status.HELD, InboundMessage.Status.RAW, InboundMessage.Status.FAILED)


def purge(older_than, chunk=500):
    """Delete inbound messages received more than `older_than` ago, except those still waiting; return how many."""
    old = InboundMessage.objects.exclude(status__in=KEPT).filter(
        received_at__lt=timezone.now() - older_than, mailbox_message__isnull=True
    )
    removed = 0
    while True:
        with transaction.atomic():
            ids = list(old.order_by("pk").values_list("pk", flat=True)[:chunk])
            if not ids:
                return removed
            InboundMessage.objects.filter(pk__in=ids).delete()
            removed += len(ids)
