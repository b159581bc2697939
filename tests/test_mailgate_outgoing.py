"""Outgoing mailbox messages leave through their account's own SMTP server, via dbmail's outbox."""

import pytest
from django.core.files.base import ContentFile

from dbmail.models import SenderAccount, TextOfEmail
from mailgate.mailboxes import outgoing
from mailgate.models import Message

from .conftest import manage, subprocess_env
from .factories import MailAccountFactory, MailServerProfileFactory, UserFactory
from .smtpserver import SMTPServer

pytestmark = pytest.mark.django_db


LOGIN = ("office", "office-password")


@pytest.fixture
def own_server():
    """The account's provider: it wants the account's login (which proves the address: no grant needed)."""
    server = SMTPServer(logins=dict([LOGIN])).start()
    yield server
    server.stop()


@pytest.fixture
def account(smtp_server, own_server, settings, tmp_path):  # smtp_server: the site's backend is SMTP, elsewhere
    settings.MEDIA_ROOT = str(tmp_path / "media")
    profile = MailServerProfileFactory(smtp_host=own_server.host, smtp_port=own_server.port, smtp_auth=True)
    return MailAccountFactory(
        profile=profile, address="office@example.org", display_name="Office", login=LOGIN[0], secret=LOGIN[1]
    )


def outgoing_message(account, **kwargs):
    values = dict(
        direction=Message.Direction.OUTGOING,
        status=Message.Status.SENDING,
        account=account,
        subject="Quarterly report",
        text="Numbers attached.\n",
        to=["ann@example.com"],
        cc=["bob@example.net"],
    )
    values.update(kwargs)
    return Message.objects.create(**values)


def test_goes_out_through_the_accounts_server_not_the_sites(smtp_server, own_server, account):
    message = outgoing_message(account, bcc=["cy@example.net"])
    message.html.save("body.html", ContentFile(b"<p>Numbers attached.</p>"))

    outgoing.send(message)

    message.refresh_from_db()
    assert (message.status, message.last_error) == (Message.Status.SENT, "")
    assert smtp_server.received == []
    assert sorted(r for m in own_server.received for r in m.rcpt_tos) == [
        "ann@example.com", "bob@example.net", "cy@example.net"
    ]  # fmt: skip
    received = own_server.to("bob@example.net")[0].message
    assert received["To"] == "ann@example.com" and received["Cc"] == "bob@example.net"
    assert "Bcc" not in received and "cy@example.net" not in str(received)
    assert received["From"] == "Office <office@example.org>"
    assert received.get_body(("html",)).get_content().strip() == "<p>Numbers attached.</p>"
    assert {e.status for e in message.outbox.all()} == {TextOfEmail.Status.SENT}
    sender = SenderAccount.objects.get(address="office@example.org")
    assert (sender.smtp_host, sender.smtp_port) == (own_server.host, own_server.port)


def test_refused_recipient_makes_an_error_with_the_reason(own_server, account):
    own_server.script("ann@example.com", "550 5.1.1 no such user")
    message = outgoing_message(account, cc=[])
    outgoing.send(message)
    message.refresh_from_db()
    assert message.status == Message.Status.ERROR
    assert "ann@example.com" in message.last_error and "5.1.1" in message.last_error


def test_deferred_copy_keeps_the_message_sending(own_server, account):
    own_server.script("bob@example.net", "451 4.3.0 try later")
    message = outgoing_message(account)
    outgoing.send(message)
    message.refresh_from_db()
    assert message.status == Message.Status.SENDING
    statuses = dict(message.outbox.values_list("to_address", "status"))
    assert statuses == {"ann@example.com": "sent", "bob@example.net": "deferred"}

    TextOfEmail.objects.filter(to_address="bob@example.net").update(status=TextOfEmail.Status.SENT)
    assert outgoing.refresh(message).status == Message.Status.SENT


def test_handed_over_once(own_server, account):
    message = outgoing_message(account)
    assert len(outgoing.submit(message)) == 2
    assert outgoing.submit(message) == []
    assert TextOfEmail.objects.count() == 2


def test_no_recipients_is_an_error(account):
    message = outgoing_message(account, to=[], cc=[])
    outgoing.send(message)
    message.refresh_from_db()
    assert (message.status, message.last_error) == (Message.Status.ERROR, "no recipients (to, cc and bcc are empty)")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_cron_command_sends_waiting_messages(smtp_server, own_server, account, settings):
    message = outgoing_message(account)
    proc = manage("mailgate_imap", "-v", "2", env=subprocess_env(smtp=smtp_server, MEDIA_ROOT=settings.MEDIA_ROOT))
    assert proc.returncode == 0, proc.stderr
    message.refresh_from_db()
    assert message.status == Message.Status.SENT
    assert len(own_server.received) == 2 and smtp_server.received == []


def test_disabled_account_sends_nothing(own_server, account):
    account.enabled = False
    account.save()
    message = outgoing_message(account)
    outgoing.send(message)
    message.refresh_from_db()
    assert (message.status, message.last_error) == (Message.Status.ERROR, "the account is disabled")
    assert own_server.received == [] and TextOfEmail.objects.count() == 0


def test_sender_account_follows_the_profile(account):
    outgoing.sync_sender(account)
    profile = account.profile
    profile.smtp_host, profile.smtp_port, profile.smtp_auth = "smtp.example.org", 2525, True
    profile.save()
    outgoing.sync_profile(profile)
    sender = SenderAccount.objects.get(address=account.address)
    assert (sender.smtp_host, sender.smtp_port) == ("smtp.example.org", 2525)
    assert (sender.smtp_username, sender.smtp_password) == (account.login, account.secret)


def test_the_mirror_is_made_for_the_account_and_never_found_by_address(account):
    staff_owned = SenderAccount.objects.create(address="desk@example.org", smtp_host="relay.example.org")
    mirror = outgoing.sync_sender(account)
    assert (mirror.address, mirror.mailbox, mirror.smtp_username) == ("office@example.org", True, LOGIN[0])
    assert mirror.pk != staff_owned.pk and account.sender == mirror

    account.address = "desk@example.org"  # saved past the API's and the admin's checks
    with pytest.raises(outgoing.AddressTaken, match="managed by staff"):
        outgoing.sync_sender(account)
    staff_owned.refresh_from_db()
    assert (staff_owned.smtp_host, staff_owned.smtp_username, staff_owned.mailbox) == ("relay.example.org", "", False)
    assert SenderAccount.objects.get(pk=mirror.pk).address == "office@example.org"


def test_a_taken_address_makes_the_message_an_error(own_server, account):
    SenderAccount.objects.create(address="office@example.org")  # staff's, made before the account synced
    message = outgoing_message(account)
    outgoing.send(message)
    message.refresh_from_db()
    assert message.status == Message.Status.ERROR and "managed by staff" in message.last_error
    assert own_server.received == [] and not TextOfEmail.objects.exists()


def test_a_profile_change_notes_an_account_whose_address_is_taken(account):
    SenderAccount.objects.create(address="office@example.org")
    outgoing.sync_profile(account.profile)
    account.refresh_from_db()
    assert account.sender is None and "managed by staff" in account.last_error


def test_the_mirror_without_a_grant_on_the_sites_server_is_off(account, settings):
    profile = account.profile
    profile.smtp_host = ""
    profile.save()
    assert outgoing.sync_sender(account).active is False
    assert (account.sender.smtp_username, account.sender.smtp_password) == ("", "")


def test_a_deleted_accounts_mirror_goes_or_is_switched_off_without_its_login(own_server, account):
    unused = MailAccountFactory(profile=account.profile, login="x", secret="never-used")
    unused_mirror = outgoing.sync_sender(unused).pk
    unused.delete()
    assert not SenderAccount.objects.filter(pk=unused_mirror).exists()

    outgoing.send(outgoing_message(account))  # the log now holds emails from the mirror: it must stay
    account.refresh_from_db()
    mirror = account.sender.pk
    account.delete()
    kept = SenderAccount.objects.get(pk=mirror)
    assert (kept.active, kept.smtp_username, kept.smtp_password, kept.mailbox) == (False, "", "", True)

    profile = MailServerProfileFactory(smtp_host="smtp.example.net", smtp_auth=True)
    again = MailAccountFactory(profile=profile, address="office@example.org", login="o", secret="new")
    assert outgoing.sync_sender(again).pk == mirror  # a new account with the address takes the old mirror


def test_a_grant_made_or_removed_switches_the_mirror_at_once(account):
    from dbmail.models import SendGrant

    profile = account.profile
    profile.smtp_host = ""  # the site's own server: a grant is needed
    profile.save()
    account.owner = UserFactory(username="ann")
    account.save()
    assert outgoing.sync_sender(account).active is False
    grant = SendGrant.objects.create(address="@example.org", user=account.owner)
    assert SenderAccount.objects.get(pk=account.sender_id).active is True
    grant.delete()
    assert SenderAccount.objects.get(pk=account.sender_id).active is False
