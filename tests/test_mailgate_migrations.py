"""mailgate 0003: a mail account keeps its own mirror sender account and loses a link to one it took over."""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps

from dbmail.models import SenderAccount
from mailgate.models import MailAccount

from .factories import MailAccountFactory

pytestmark = pytest.mark.django_db

migration = importlib.import_module("mailgate.migrations.0003_mailbox_senders")


def test_links_to_older_sender_accounts_are_dropped_and_mirrors_marked():
    office = SenderAccount.objects.create(address="office@example.org", smtp_host="relay.example.org")
    taker = MailAccountFactory(address="office@example.org", sender=office)  # the old update_or_create did this
    SenderAccount.objects.filter(pk=office.pk).update(created_at=taker.created_at - timedelta(days=30))
    mine = MailAccountFactory(address="ann@provider.example")
    mine.sender = SenderAccount.objects.create(address="ann@provider.example")  # made right after its account
    mine.save()

    migration.forwards(apps, None)

    assert MailAccount.objects.get(pk=taker.pk).sender is None
    office.refresh_from_db()
    assert office.mailbox is False and office.smtp_host == "relay.example.org"
    assert MailAccount.objects.get(pk=mine.pk).sender.mailbox is True
