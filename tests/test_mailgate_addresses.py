"""The site's own addresses are counted only in the domains it routes: a catch-all list does not make the world ours."""

import pytest

from dbmail.models import SenderAccount, TextOfEmail
from mailgate.gate import addresses
from mailgate.gate import receive as gate

from .factories import EmailListFactory, MailAccountFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catch_all(settings):
    settings.MAILGATE_LIST_DOMAINS = ["lists.example.org"]
    return EmailListFactory(name="Everything", regex=".*", posting_policy="members", addresses="desk@example.org")


def test_a_catch_all_list_counts_only_in_list_domains(catch_all):
    assert addresses.own_address("anything@lists.example.org")
    assert not addresses.own_address("stranger@example.net")
    assert not addresses.own_address("someone@gmail.example")


def test_refused_posts_get_their_notice_despite_a_catch_all_list(catch_all, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    raw = b"From: stranger@example.net\r\nTo: x@lists.example.org\r\nSubject: hi\r\n\r\nhello\r\n"
    assert gate.run(raw, "x@lists.example.org", "stranger@example.net").code == 0
    assert TextOfEmail.objects.get().to_address == "stranger@example.net"


def test_without_list_domains_the_routed_domains_count(settings):
    settings.MAILGATE_LIST_DOMAINS = []
    settings.DBMAIL_VERP_DOMAIN = "bounces.example.org"
    EmailListFactory(regex=".*")
    SenderAccount.objects.create(address="office@staff.example.org")
    assert addresses.routed_domains() >= {"bounces.example.org", "staff.example.org", "example.org"}
    assert addresses.own_address("anything@staff.example.org")
    assert not addresses.own_address("stranger@example.net")


def test_site_addresses_are_ours_and_a_users_mailbox_is_not(settings):
    settings.DBMAIL_UNSUBSCRIBE_MAILTO = "unsubscribe@example.org"
    for own in ("noreply@example.org", "Unsubscribe@example.org", "unsubscribe+abcdef@example.org"):
        assert addresses.own_address(own), own
    mirror = SenderAccount.objects.create(address="ann@provider.example", mailbox=True)
    MailAccountFactory(address="ann@provider.example", sender=mirror)
    assert not addresses.own_address("ann@provider.example")
    assert "provider.example" not in addresses.routed_domains()
