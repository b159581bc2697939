"""A suppression written in one spelling of a mailbox stops mail to every other spelling.

Each way a suppression is written (the unsubscribe link, RFC 8058's one-click
POST, the mailto through the gate, a hard bounce or a complaint applied by
the tracker, a CSV import, the panel's and the admin's add form) is followed
by mail to the same mailbox written otherwise: a request expanded and sent by
a real dbmail_cron run to the test SMTP server, and, for what stops all mail,
transactional mail too. Only the other person's mail may arrive.
"""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from dbmail.content import tokens
from dbmail.intake import outbox
from dbmail.models import MessageRequest, Suppression, TextOfEmail
from dbmail.track import guard
from dbmail.track.apply import apply_batch
from mailgate.gate import receive as gate

from .factories import EmailListFactory, MessageRequestFactory, SenderAccountFactory, TextOfEmailFactory, UserFactory
from .panel import panel_user
from .sendingapi import client_for, composer
from .tracking_support import event

pytestmark = pytest.mark.django_db(transaction=True)
E = TextOfEmail.Status
KEY = "anna@xn--bcher-kva.example"
# Valid spellings of one mailbox, each a different lower-cased string.
SPELLINGS = [
    "anna@bücher.example",
    "Anna@XN--BCHER-KVA.Example",
    '"anna"@bücher.example',
    '"ANNA"@xn--bcher-kva.example',
]
OTHER = "bob@example.net"


@pytest.fixture(autouse=True)
def office(settings):
    settings.DBMAIL_UNSUBSCRIBE_MAILTO = "unsubscribe@example.org"
    return SenderAccountFactory(address="office@example.org")


def _unsubscribe_link(spelling):
    Client().post(reverse("dbmail:unsubscribe", args=[tokens.issue(spelling)]))


def _one_click(spelling):
    client = Client(enforce_csrf_checks=True)  # a mail provider's POST: no cookie, no CSRF token
    client.post(reverse("dbmail:unsubscribe", args=[tokens.issue(spelling)]), {"List-Unsubscribe": "One-Click"})


def _mailto(spelling):
    raw = b"From: x@example.com\r\nTo: unsubscribe@example.org\r\nSubject: unsubscribe\r\n\r\nstop\r\n"
    assert gate.run(raw, tokens.mailto_address(tokens.issue(spelling)), "x@example.com").code == 0


def _tracked(kind):
    def write(spelling):
        sent = TextOfEmailFactory(status=E.SENT, to_address=spelling)
        apply_batch([event(sent.message_id, kind, diagnostic="550 5.1.1 no such user")])

    return write


def _panel():
    client = Client()
    client.force_login(panel_user())
    return client


def _csv_import(spelling):
    data = f"email,reason\nAnna Smith <{spelling}.>,\n".encode()  # a display name and a trailing dot, too
    file = SimpleUploadedFile("old-tool.csv", data, content_type="text/csv")
    _panel().post(reverse("commpanel:suppression_import"), {"file": file, "reason": "manual", "note": "old tool"})


def _panel_add(spelling):
    _panel().post(reverse("commpanel:suppressions"), {"address": spelling, "reason": "manual", "note": "by phone"})


def _admin_add(spelling):
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    form = {"address": spelling, "reason": "manual", "created_at_0": "2026-11-30", "created_at_1": "09:00:00"}
    response = client.post(reverse("admin:dbmail_suppression_add"), form)
    assert response.status_code == 302, response.context["adminform"].form.errors


WRITERS = {
    "unsubscribe link": (_unsubscribe_link, Suppression.Reason.UNSUBSCRIBED),
    "one-click POST": (_one_click, Suppression.Reason.UNSUBSCRIBED),
    "mailto through the gate": (_mailto, Suppression.Reason.UNSUBSCRIBED),
    "hard bounce": (_tracked("bounced"), Suppression.Reason.BOUNCED),
    "complaint": (_tracked("complained"), Suppression.Reason.COMPLAINED),
    "CSV import": (_csv_import, Suppression.Reason.MANUAL),
    "panel add": (_panel_add, Suppression.Reason.MANUAL),
    "admin add": (_admin_add, Suppression.Reason.MANUAL),
}


def run_cron():
    call_command("dbmail_cron", stdout=io.StringIO(), stderr=io.StringIO())


def delivered_to(smtp_server):
    return sorted(address for message in smtp_server.received for address in message.rcpt_tos)


@pytest.mark.parametrize("written", range(len(SPELLINGS)), ids=lambda n: f"written-{n}")
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_suppression_in_one_spelling_stops_mail_to_every_other(writer, written, smtp_server):
    write, reason = WRITERS[writer]
    write(SPELLINGS[written])
    row = Suppression.objects.get()
    assert (row.address, row.reason) == (KEY, reason)
    others = [s for n, s in enumerate(SPELLINGS) if n != written]
    MessageRequestFactory(recipient_set="addresses", recipient_params={"rows": [*others, OTHER]})
    ad_hoc = [outbox.enqueue(s, "Your code", "1234", from_email="office@example.org") for s in others]
    run_cron()
    if row.stops_all_mail:
        assert delivered_to(smtp_server) == [OTHER]
        assert {(e.status, e.last_error) for e in ad_hoc} == {(E.DROPPED, row.refusal())}
    else:  # an unsubscribe stops bulk mail only: the transactional mail asked for still goes
        assert {e.status for e in ad_hoc} == {E.QUEUED}
        assert len(smtp_server.received) == 1 + len(ad_hoc)
    assert not TextOfEmail.objects.filter(request__isnull=False).exclude(to_address=OTHER).exists()


def test_the_api_sends_nothing_to_another_spelling_of_a_bounced_mailbox(
    smtp_server, django_capture_on_commit_callbacks
):
    _tracked("bounced")("anna@bücher.example")
    api = client_for(composer("ann"))
    with django_capture_on_commit_callbacks(execute=True):
        one = api.post("/api/v1/send/", {"to": 'Anna <"anna"@xn--bcher-kva.example>', "subject": "s", "text": "t"})
    assert one.status_code == 201 and one.json()["status"] == E.DROPPED
    made = api.post(
        "/api/v1/requests/",
        {"sender": "office@example.org", "subject": "Hi", "text_body": "Hello", "rows": [*SPELLINGS, OTHER]},
        format="json",
    )
    assert made.status_code == 201, made.json()
    run_cron()
    assert delivered_to(smtp_server) == [OTHER]
    assert MessageRequest.objects.get().emails.count() == 1  # one mailbox, one email: the rest were repeats


def test_a_list_forward_leaves_out_every_spelling_of_a_suppressed_member(smtp_server):
    members = [UserFactory(email=SPELLINGS[1]), UserFactory(email=SPELLINGS[3]), UserFactory(email=OTHER)]
    EmailListFactory(name="Physics", regex="physics", users=members)
    _one_click(SPELLINGS[0])
    raw = b"From: ann@example.com\r\nTo: physics@lists.example.org\r\nSubject: notes\r\n\r\nhello\r\n"
    assert gate.run(raw, "physics@lists.example.org", "ann@example.com").code == 0
    assert list(TextOfEmail.objects.values_list("to_address", flat=True)) == [OTHER]


def test_resuming_a_paused_request_cancels_its_emails_to_any_spelling_suppressed_meanwhile():
    mail = MessageRequestFactory(status=MessageRequest.Status.PAUSED, paused_reason="bounces", paused_from="expanded")
    waiting = [TextOfEmailFactory(request=mail, account=mail.sender, to_address=s) for s in (SPELLINGS[0], OTHER)]
    Suppression.objects.create(address=SPELLINGS[1], reason=Suppression.Reason.COMPLAINED)
    assert "1 email to addresses suppressed meanwhile cancelled" in guard.resume(mail)
    assert [TextOfEmail.objects.get(pk=e.pk).status for e in waiting] == [E.CANCELLED, E.QUEUED]


def test_a_quoted_local_part_that_needs_its_quotes_is_a_mailbox_of_its_own(smtp_server):
    Suppression.objects.add("annasmith@example.net", Suppression.Reason.BOUNCED)
    Suppression.objects.add("anna.smith@example.net", Suppression.Reason.BOUNCED)
    email = outbox.enqueue('Anna <"anna smith"@example.net>', "Your code", "1234", from_email="office@example.org")
    assert (email.status, email.to_address) == (E.QUEUED, '"anna smith"@example.net')
    run_cron()
    assert delivered_to(smtp_server) == ['"anna smith"@example.net']
    Suppression.objects.add('"Anna Smith"@Example.net', Suppression.Reason.BOUNCED)
    again = outbox.enqueue('"anna smith"@example.net', "Your code", "1234", from_email="office@example.org")
    assert again.status == E.DROPPED
