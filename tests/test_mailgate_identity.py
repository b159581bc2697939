"""Which addresses a mail account may take, and when it may send as its address."""

import pytest

from dbmail.models import SenderAccount, SendGrant
from mailgate.mailboxes import identity

from .factories import EmailListFactory, MailAccountFactory, MailServerProfileFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_a_list_address_is_refused_in_any_domain_while_the_list_domains_are_unknown(settings):
    EmailListFactory(name="Physics", regex="physics")
    settings.MAILGATE_LIST_DOMAINS = []
    assert "list 'Physics'" in identity.address_refusal("physics@anywhere.example")
    settings.MAILGATE_LIST_DOMAINS = ["lists.example.org"]
    assert "list 'Physics'" in identity.address_refusal("physics@lists.example.org")
    assert identity.address_refusal("physics@anywhere.example") == ""


def test_the_accounts_own_mirror_is_no_obstacle_and_a_retired_one_is_free():
    account = MailAccountFactory(address="ann@provider.example")
    account.sender = SenderAccount.objects.create(address="ann@provider.example", mailbox=True)
    account.save()
    assert identity.address_refusal("ann@provider.example", account) == ""
    assert "another mail account" in identity.address_refusal("ann@provider.example")
    SenderAccount.objects.create(address="gone@provider.example", mailbox=True)  # its account was deleted
    assert identity.address_refusal("gone@provider.example") == ""


@pytest.mark.parametrize(
    "smtp_host, smtp_auth, needs_grant",
    [("", True, True), ("smtp.example.net", False, True), ("smtp.example.net", True, False)],
)
def test_only_an_own_server_with_a_login_sends_without_a_grant(smtp_host, smtp_auth, needs_grant):
    ann = UserFactory(username="ann")
    profile = MailServerProfileFactory(smtp_host=smtp_host, smtp_auth=smtp_auth)
    account = MailAccountFactory(owner=ann, profile=profile, address="desk@example.org")
    assert bool(identity.sending_refusal(account)) == needs_grant
    SendGrant.objects.create(address="desk@example.org", user=ann)
    assert identity.sending_refusal(account) == ""


def test_an_account_without_an_owner_cannot_hold_a_grant():
    account = MailAccountFactory(owner=None, address="desk@example.org")
    assert "an account without an owner" in identity.sending_refusal(account)
