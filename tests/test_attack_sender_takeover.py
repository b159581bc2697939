"""Attack: an ordinary API user takes over a sender account, or a list's address, with a mail account.

The organisation's `office@example.org` sends through its own relay with its
own login. Mallory (not staff) has an API token and a mailbox on a provider
whose server she controls. Creating a mail account with a taken address, or
renaming hers to one, must be refused with a field error and write nothing
to the sender account: its mail keeps going through the relay.
"""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dbmail.intake.outbox import send_now
from dbmail.models import SenderAccount
from mailgate.gate import receive as gate
from mailgate.models import EmailList, MailAccount

from .factories import EmailListFactory, MailAccountFactory, UserFactory
from .smtpserver import SMTPServer

pytestmark = pytest.mark.django_db

RELAY_LOGIN = ("office", "relay-password-of-the-office")


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture(autouse=True)
def site_server(smtp_server):
    """The site's own server (EMAIL_*): sends what no sender account of its own sends."""
    return smtp_server


@pytest.fixture
def relay():
    """The organisation's relay: the office logs in to it."""
    server = SMTPServer(logins=dict([RELAY_LOGIN])).start()
    yield server
    server.stop()


@pytest.fixture
def hers():
    """A server Mallory controls (it accepts anything)."""
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def staff():
    """Staff who manage the server profiles (the API writes them for holders of the admin's permissions)."""
    user = UserFactory(username="staffer", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__endswith="_mailserverprofile"))
    return client_for(user)


@pytest.fixture
def mallory():
    return client_for(UserFactory(username="mallory"))


@pytest.fixture
def office(relay):
    return SenderAccount.objects.create(
        address="office@example.org",
        display_name="The Office",
        smtp_host=relay.host,
        smtp_port=relay.port,
        smtp_username=RELAY_LOGIN[0],
        smtp_password=RELAY_LOGIN[1],
    )


@pytest.fixture
def her_profile(staff, hers):
    """A provider's profile, made by staff as profiles are; IMAP is unreachable (discovery fails quickly)."""
    response = staff.post(
        "/api/v1/profiles/",
        {"name": "provider", "imap_host": "127.0.0.1", "imap_port": 9, "imap_ssl": False,
         "smtp_host": hers.host, "smtp_port": hers.port, "smtp_starttls": False, "smtp_auth": True},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def create_account(client, profile, address, login="mallory"):
    return client.post(
        "/api/v1/accounts/",
        {"profile": profile, "address": address, "login": login, "secret": "her-own-password"},
        format="json",
    )


def relay_settings(office):
    office.refresh_from_db()
    return (office.smtp_host, office.smtp_port, office.smtp_username, office.smtp_password, office.active)


def office_mail_goes_through_the_relay(relay, hers, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        send_now("bob@example.net", "Minutes", "The minutes.\n", from_email="office@example.org")
    return [m.rcpt_tos for m in relay.received] == [["bob@example.net"]] and hers.received == []


@pytest.mark.parametrize("address", ["office@example.org", "Office@Example.ORG"])
def test_a_mail_account_cannot_take_a_sender_accounts_address(
    mallory, office, relay, hers, her_profile, address, django_capture_on_commit_callbacks
):
    before = relay_settings(office)

    response = create_account(mallory, her_profile, address)

    assert response.status_code == 400, response.json()
    assert "sender account" in " ".join(response.json()["address"])
    assert relay_settings(office) == before
    assert not MailAccount.objects.exists()
    assert not hasattr(SenderAccount.objects.get(pk=office.pk), "mail_account")
    assert office_mail_goes_through_the_relay(relay, hers, django_capture_on_commit_callbacks)


def test_renaming_a_mail_account_to_a_sender_accounts_address_is_refused(
    mallory, office, relay, hers, her_profile, django_capture_on_commit_callbacks
):
    created = create_account(mallory, her_profile, "mallory@provider.example")
    assert created.status_code == 201, created.json()
    before = relay_settings(office)

    response = mallory.patch(f"/api/v1/accounts/{created.json()['id']}/", {"address": "office@example.org"})

    assert response.status_code == 400 and "address" in response.json()
    assert relay_settings(office) == before
    mine = MailAccount.objects.get()
    assert mine.address == "mallory@provider.example" and mine.sender.address == "mallory@provider.example"
    assert office_mail_goes_through_the_relay(relay, hers, django_capture_on_commit_callbacks)


def test_a_profile_change_updates_only_the_accounts_own_sender(staff, mallory, office, hers, her_profile):
    created = create_account(mallory, her_profile, "mallory@provider.example")
    before = relay_settings(office)

    assert staff.patch(f"/api/v1/profiles/{her_profile}/", {"smtp_port": hers.port + 1}).status_code == 200

    assert relay_settings(office) == before
    mirror = MailAccount.objects.get(pk=created.json()["id"]).sender
    assert (mirror.address, mirror.smtp_port) == ("mallory@provider.example", hers.port + 1)


@pytest.fixture
def physics(settings):
    settings.MAILGATE_LIST_DOMAINS = ["lists.example.org"]
    ann = UserFactory(username="ann", email="ann@example.com")
    return EmailListFactory(name="Physics", regex="physics", users=[ann], posting_policy=EmailList.Policy.ANYONE)


def post_to_physics(capture):
    raw = b"From: ann@example.com\r\nTo: physics@lists.example.org\r\nSubject: Lab\r\n\r\nThursday.\r\n"
    with capture(execute=True):  # forwards to a small list are sent once the gate's transaction commits
        return gate.run(raw, "physics@lists.example.org", "ann@example.com")


def test_a_mail_account_cannot_take_a_list_address(
    mallory, physics, her_profile, hers, smtp_server, django_capture_on_commit_callbacks
):
    response = create_account(mallory, her_profile, "physics@lists.example.org")

    assert response.status_code == 400 and "list" in " ".join(response.json()["address"])
    assert not SenderAccount.objects.filter(address="physics@lists.example.org").exists()
    assert post_to_physics(django_capture_on_commit_callbacks).code == 0
    assert [m.rcpt_tos for m in smtp_server.received] == [["ann@example.com"]] and hers.received == []


def test_a_list_made_after_the_account_never_sends_through_the_accounts_server(
    mallory, her_profile, hers, smtp_server, settings, django_capture_on_commit_callbacks
):
    assert create_account(mallory, her_profile, "physics@lists.example.org").status_code == 201
    settings.MAILGATE_LIST_DOMAINS = ["lists.example.org"]
    ann = UserFactory(username="ann", email="ann@example.com")
    EmailListFactory(name="Physics", regex="physics", users=[ann], posting_policy=EmailList.Policy.ANYONE)

    assert post_to_physics(django_capture_on_commit_callbacks).code == 0

    assert [m.rcpt_tos for m in smtp_server.received] == [["ann@example.com"]]
    assert hers.received == []


@pytest.mark.parametrize(
    "address, reason",
    [
        ("noreply@example.org", "site's own"),  # DEFAULT_FROM_EMAIL
        ("unsubscribe@example.org", "site's own"),  # DBMAIL_UNSUBSCRIBE_MAILTO
        ("bounces+abc.def@lists.example.org", "site's own"),  # a VERP address
        ("Ann@Example.net", "another"),  # another user's mail account
    ],
)
def test_the_sites_own_addresses_and_other_users_accounts_are_refused(mallory, her_profile, settings, address, reason):
    settings.DEFAULT_FROM_EMAIL = "mailsite <noreply@example.org>"
    settings.DBMAIL_UNSUBSCRIBE_MAILTO = "unsubscribe@example.org"
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"
    MailAccountFactory(owner=UserFactory(username="ann"), address="ann@example.net")

    response = create_account(mallory, her_profile, address)

    assert response.status_code == 400, response.json()
    assert reason in " ".join(response.json()["address"])
    assert MailAccount.objects.filter(owner__username="mallory").count() == 0
    assert SenderAccount.objects.filter(address__iexact=address).count() == 0
