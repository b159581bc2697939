"""Attack: an ordinary API user sends as any address (`ceo@example.org`) through the site's own mail server.

A mail account on a profile with a blank SMTP host (or with SMTP login off)
sends through the site's server, which trusts the site: nothing there checks
the From. Such sending needs a grant from staff (an address or a domain, to
the user or a group). An account with its own server and its own login needs
none: that server accepts only what the login may send as.
"""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dbmail.intake.outbox import UnknownSender, send_now
from mailgate.mailboxes import outgoing
from mailgate.models import Message

from .factories import GroupFactory, UserFactory
from .smtpserver import SMTPServer

pytestmark = pytest.mark.django_db


def grant(address, granted_by, **holder):
    from dbmail.models import SendGrant  # here, so that the attacks themselves also run where grants do not exist

    return SendGrant.objects.create(address=address, granted_by=granted_by, **holder)


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def staff_user():
    """Staff who manage the server profiles (the API writes them for holders of the admin's permissions)."""
    user = UserFactory(username="staffer", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__endswith="_mailserverprofile"))
    return user


@pytest.fixture
def staff(staff_user):
    return client_for(staff_user)


@pytest.fixture
def mallory_user():
    return UserFactory(username="mallory")


@pytest.fixture
def mallory(mallory_user):
    return client_for(mallory_user)


def make_profile(staff, name, **smtp):
    values = {"name": name, "imap_host": "127.0.0.1", "imap_port": 9, "imap_ssl": False, "smtp_starttls": False}
    response = staff.post("/api/v1/profiles/", {**values, **smtp}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


@pytest.fixture
def site_profile(staff, smtp_server):
    """Blank SMTP host: the site's own server (smtp_server plays it)."""
    return make_profile(staff, "site", smtp_host="")


def create_account(client, profile, address, login="mallory", secret="her-own-password"):
    response = client.post(
        "/api/v1/accounts/",
        {"profile": profile, "address": address, "login": login, "secret": secret},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def post_message(client, account, capture, to="victim@example.com"):
    with capture(execute=True):
        return client.post(
            "/api/v1/messages/",
            {"account": account, "to": [to], "subject": "Wire the money", "text": "Today, please.\n"},
            format="json",
        )


def test_sending_as_anyone_through_the_sites_server_is_refused(
    mallory, site_profile, smtp_server, django_capture_on_commit_callbacks
):
    account = create_account(mallory, site_profile, "ceo@example.org")

    response = post_message(mallory, account, django_capture_on_commit_callbacks)

    assert response.status_code == 400, response.json()
    assert "grant" in " ".join(response.json()["account"])
    assert not Message.objects.exists() and smtp_server.received == []


def test_smtp_login_off_counts_as_the_sites_server(staff, mallory, smtp_server, django_capture_on_commit_callbacks):
    relay = SMTPServer().start()  # a server that relays for the site's address, without a login
    try:
        profile = make_profile(staff, "open relay", smtp_host=relay.host, smtp_port=relay.port, smtp_auth=False)
        account = create_account(mallory, profile, "ceo@example.org")
        response = post_message(mallory, account, django_capture_on_commit_callbacks)
        assert response.status_code == 400 and "grant" in " ".join(response.json()["account"])
        assert relay.received == [] and smtp_server.received == []
    finally:
        relay.stop()


def test_the_claimed_address_is_no_sender_for_the_rest_of_the_site(mallory, site_profile, smtp_server):
    create_account(mallory, site_profile, "ceo@example.org")
    with pytest.raises(UnknownSender):
        send_now("victim@example.com", "x", "y", from_email="ceo@example.org")
    assert smtp_server.received == []


def test_a_message_already_waiting_goes_to_error_when_the_grant_is_gone(
    staff_user, mallory_user, mallory, site_profile, smtp_server, django_capture_on_commit_callbacks
):
    ceo = grant("ceo@example.org", staff_user, user=mallory_user)
    account = create_account(mallory, site_profile, "ceo@example.org")
    with django_capture_on_commit_callbacks(execute=False):  # created, not yet handed to the outbox
        response = mallory.post("/api/v1/messages/", {"account": account, "to": ["bob@example.net"]}, format="json")
    assert response.status_code == 201, response.json()
    ceo.delete()

    outgoing.send_pending()

    message = Message.objects.get()
    assert message.status == Message.Status.ERROR
    assert "ceo@example.org" in message.last_error and "grant" in message.last_error
    assert not message.outbox.exists() and smtp_server.received == []


def test_a_grant_to_the_user_lets_her_send_as_that_address(
    staff_user, mallory_user, mallory, site_profile, smtp_server, django_capture_on_commit_callbacks
):
    grant("Ceo@Example.org", staff_user, user=mallory_user)
    account = create_account(mallory, site_profile, "ceo@example.org")

    response = post_message(mallory, account, django_capture_on_commit_callbacks)

    assert response.status_code == 201, response.json()
    assert Message.objects.get().status == Message.Status.SENT
    [received] = smtp_server.received
    assert received.rcpt_tos == ["victim@example.com"] and received.message["From"] == "ceo@example.org"


def test_a_domain_grant_to_a_group_covers_that_domain_only(
    staff_user, mallory_user, mallory, site_profile, smtp_server, django_capture_on_commit_callbacks
):
    office = GroupFactory(name="office")
    mallory_user.groups.add(office)
    grant("@example.org", staff_user, group=office)
    inside = create_account(mallory, site_profile, "anyone@example.org")
    outside = create_account(mallory, site_profile, "anyone@sub.example.org")

    assert post_message(mallory, inside, django_capture_on_commit_callbacks).status_code == 201
    refused = post_message(mallory, outside, django_capture_on_commit_callbacks)

    assert refused.status_code == 400 and "grant" in " ".join(refused.json()["account"])
    assert [m.message["From"] for m in smtp_server.received] == ["anyone@example.org"]


def test_a_grant_to_someone_else_does_not_count(
    staff_user, mallory, site_profile, smtp_server, django_capture_on_commit_callbacks
):
    grant("ceo@example.org", staff_user, user=UserFactory(username="ceo"))
    account = create_account(mallory, site_profile, "ceo@example.org")

    assert post_message(mallory, account, django_capture_on_commit_callbacks).status_code == 400
    assert smtp_server.received == []


@pytest.fixture
def provider():
    """A mail provider's submission server: Mallory logs in and may send as her own address only."""
    server = SMTPServer(
        logins={"mallory": "her-own-password"}, may_send_as={"mallory": {"mallory@provider.example"}}
    ).start()
    yield server
    server.stop()


@pytest.fixture
def provider_profile(staff, provider):
    return make_profile(staff, "provider", smtp_host=provider.host, smtp_port=provider.port, smtp_auth=True)


def test_an_own_server_with_its_own_login_needs_no_grant(
    mallory, provider, provider_profile, smtp_server, django_capture_on_commit_callbacks
):
    account = create_account(mallory, provider_profile, "mallory@provider.example")

    response = post_message(mallory, account, django_capture_on_commit_callbacks, to="bob@example.net")

    assert response.status_code == 201, response.json()
    assert Message.objects.get().status == Message.Status.SENT
    assert [m.rcpt_tos for m in provider.received] == [["bob@example.net"]] and smtp_server.received == []


@pytest.mark.parametrize(
    "address, secret",
    [("ceo@example.org", "her-own-password"), ("mallory@provider.example", "a-guessed-password")],
)
def test_an_own_server_refuses_what_its_login_may_not_send(
    mallory, provider, provider_profile, smtp_server, django_capture_on_commit_callbacks, address, secret
):
    account = create_account(mallory, provider_profile, address, secret=secret)

    response = post_message(mallory, account, django_capture_on_commit_callbacks)

    assert response.status_code == 201  # the server decides, not us
    message = Message.objects.get()
    assert message.status != Message.Status.SENT
    assert provider.received == [] and smtp_server.received == []
