from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from mailgate.models import Bounce, InboundMessage

pytestmark = pytest.mark.django_db


def inbound(status, days_old):
    row = InboundMessage.objects.create(envelope_recipient="x@example.org", raw=b"x", status=status)
    InboundMessage.objects.filter(pk=row.pk).update(received_at=timezone.now() - timedelta(days=days_old))
    return row


def test_old_finished_messages_go_waiting_ones_stay(capsys):
    old_bounce = inbound("bounce", 40)
    Bounce.objects.create(inbound=old_bounce, bounce_type="hard")
    kept = [inbound("forwarded", 5), inbound("held", 40), inbound("raw", 40), inbound("failed", 40)]
    inbound("no_list", 40)
    call_command("mailgate_purge", "--older-than", "30d")
    assert "removed 2 inbound messages" in capsys.readouterr().out
    assert sorted(InboundMessage.objects.values_list("pk", flat=True)) == sorted(r.pk for r in kept)
    assert not Bounce.objects.exists()


def test_bad_duration_is_a_clear_error():
    with pytest.raises(CommandError, match="--older-than"):
        call_command("mailgate_purge", "--older-than", "soon")


def test_bytes_of_mailbox_messages_stay(capsys):
    from mailgate.models import Message

    from .factories import MailFolderFactory

    folder = MailFolderFactory()
    polled = inbound("received", 40)
    Message.objects.create(direction="in", status="received", account=folder.account, folder=folder, inbound=polled)
    inbound("received", 40)
    call_command("mailgate_purge", "--older-than", "30d")
    assert "removed 1 inbound messages" in capsys.readouterr().out
    assert list(InboundMessage.objects.values_list("pk", flat=True)) == [polled.pk]
