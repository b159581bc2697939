"""The rule of dbmail.models.Suppression across every kind of mail: what each reason stops.

An unsubscribe stops bulk mail (requests, list forwards) only; a hard bounce,
a complaint or a block by hand stops all mail, transactional included (the
ad-hoc path, the spool, mailbox messages), until an admin deletes it.
"""

import datetime

import pytest

from dbmail.intake import expand, outbox, spool
from dbmail.models import SendGrant, Suppression, TextOfEmail
from mailgate.gate import receive as gate
from mailgate.mailboxes import outgoing
from mailgate.models import Message

from .factories import (
    EmailListFactory,
    MailAccountFactory,
    MailServerProfileFactory,
    MessageRequestFactory,
    SenderAccountFactory,
    UserFactory,
    mail_fixture,
)
from .spoolfiles import item, xml

pytestmark = pytest.mark.django_db
Reason = Suppression.Reason
QUEUED, DROPPED = TextOfEmail.Status.QUEUED, TextOfEmail.Status.DROPPED
ADDRESS = "kim@example.net"
ON = datetime.datetime(2026, 11, 30, 9, tzinfo=datetime.UTC)
WHY = {
    Reason.BOUNCED: "suppressed: hard bounce on 2026-11-30",
    Reason.COMPLAINED: "suppressed: complaint on 2026-11-30",
    Reason.MANUAL: "suppressed: blocked by hand on 2026-11-30",
}


@pytest.fixture
def kim():
    return UserFactory(username="kim", email=ADDRESS)


def suppress(reason):
    return Suppression.objects.create(address="Kim@Example.net", reason=reason, created_at=ON)


# --- bulk mail: every reason leaves the address out ---


@pytest.mark.parametrize("reason", Reason.values)
def test_a_request_leaves_out_every_suppressed_address(kim, reason):
    UserFactory(username="other", email="other@example.net")
    suppress(reason)
    MessageRequestFactory()
    expand.expand_due()
    assert sorted(TextOfEmail.objects.values_list("to_address", flat=True)) == ["other@example.net"]


@pytest.mark.parametrize("reason", Reason.values)
def test_a_list_forward_leaves_out_every_suppressed_member(kim, reason):
    EmailListFactory(name="Physics", regex="physics", users=[kim, UserFactory(email="bob@example.net")])
    suppress(reason)
    assert gate.run(mail_fixture("plain.eml"), "physics@lists.example.org", "ann@example.com").code == 0
    assert list(TextOfEmail.objects.values_list("to_address", flat=True)) == ["bob@example.net"]


# --- transactional mail: an unsubscribe does not stop it, the rest do ---


def transactional_cases():
    return [(Reason.UNSUBSCRIBED, QUEUED, "")] + [(reason, DROPPED, why) for reason, why in WHY.items()]


@pytest.mark.parametrize(("reason", "status", "why"), transactional_cases())
def test_ad_hoc_mail(reason, status, why):
    suppress(reason)
    SenderAccountFactory()
    email = outbox.enqueue("Kim <kim@example.net>", "Your password", "Use this link.", from_email="office@example.org")
    assert (email.status, email.last_error) == (status, why)
    if why:
        assert email.events.get().text == why  # the log says so too


@pytest.mark.parametrize(("reason", "status", "why"), transactional_cases())
def test_spool_mail(reason, status, why):
    suppress(reason)
    SenderAccountFactory(address="foo@example.com")
    record = spool.SpoolFile.objects.create(name="a.xml", sha256="0" * 64, location="a.xml")
    spool.create_emails(record, spool.parse(xml(item(address=ADDRESS), item(address="x@example.net"))), ON)
    by_address = {e.to_address: (e.status, e.last_error) for e in TextOfEmail.objects.all()}
    assert by_address == {ADDRESS: (status, why), "x@example.net": (QUEUED, "")}


@pytest.mark.parametrize(("reason", "status", "why"), transactional_cases())
def test_mailbox_mail(reason, status, why):
    suppress(reason)
    owner = UserFactory(username="ann")
    SendGrant.objects.create(address="@example.org", user=owner)
    account = MailAccountFactory(profile=MailServerProfileFactory(), owner=owner, address="office@example.org")
    message = Message.objects.create(
        direction=Message.Direction.OUTGOING,
        status=Message.Status.SENDING,
        account=account,
        subject="Report",
        text="Numbers.\n",
        to=[ADDRESS, "bob@example.net"],
    )
    emails = {e.to_address: (e.status, e.last_error) for e in outgoing.submit(message)}
    assert emails == {ADDRESS: (status, why), "bob@example.net": (QUEUED, "")}


def test_an_admin_lifts_a_suppression_by_deleting_it():
    row = suppress(Reason.BOUNCED)
    SenderAccountFactory()
    assert outbox.enqueue(ADDRESS, "x", "y", from_email="office@example.org").status == DROPPED
    row.delete()
    assert outbox.enqueue(ADDRESS, "x", "y", from_email="office@example.org").status == QUEUED


@pytest.mark.parametrize(
    ("reason", "stops"),
    [
        (Reason.UNSUBSCRIBED, "bulk mail only"),
        (Reason.BOUNCED, "all mail"),
        (Reason.COMPLAINED, "all mail"),
        (Reason.MANUAL, "all mail"),
    ],
)
def test_the_rule_in_words(reason, stops):
    assert suppress(reason).stops == stops
