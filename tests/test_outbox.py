import pytest
from django.db import transaction

from dbmail.intake import outbox
from dbmail.models import TextOfEmail

from .factories import SenderAccountFactory

pytestmark = pytest.mark.django_db(transaction=True)
Status = TextOfEmail.Status


def test_send_now_sends_at_once_through_the_outbox(smtp_server):
    email = outbox.send_now(to="Ann <ann@example.net>", subject="Code\n 1234", text="Your code")
    assert email.status == Status.SENT and email.attempts == 1
    (got,) = smtp_server.received
    assert got.message_id == email.message_id and got.message["Subject"] == "Code 1234"
    assert got.message["To"] == "Ann <ann@example.net>"
    assert email.events.get().smtp_code == 250


def test_send_now_waits_for_the_callers_commit(smtp_server):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            outbox.send_now(to="a@example.net", subject="rolled back", text="x")
            raise RuntimeError("the view failed")
    with transaction.atomic():
        email = outbox.send_now(to="b@example.net", subject="kept", text="x")
        assert smtp_server.received == []  # not before the commit
    assert [m.rcpt_tos for m in smtp_server.received] == [["b@example.net"]]
    email.refresh_from_db()
    assert email.status == Status.SENT
    assert not TextOfEmail.objects.filter(subject="rolled back").exists()


def test_server_down_leaves_it_queued_for_cron(settings):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1
    email = outbox.send_now(to="a@example.net", subject="s", text="t")
    assert (email.status, email.attempts) == (Status.QUEUED, 0)
    assert "cannot connect" in email.events.get().text


def test_sender_must_be_configured():
    SenderAccountFactory(address="club@example.org", display_name="Club")
    assert (
        outbox.enqueue("a@example.net", "s", "t", from_email="club@example.org").from_header
        == "Club <club@example.org>"
    )
    assert outbox.enqueue("a@example.net", "s", "t").account is None  # DEFAULT_FROM_EMAIL
    with pytest.raises(outbox.UnknownSender):
        outbox.enqueue("a@example.net", "s", "t", from_email="stranger@example.com")


def test_bad_recipient_is_recorded_as_dropped_not_lost():
    email = outbox.enqueue("not an address", "s", "t")
    assert email.status == Status.DROPPED and "invalid address" in email.last_error
    assert email.events.count() == 1


def test_html_only_gets_text_and_send_at_schedules():
    from datetime import timedelta

    from django.utils import timezone

    later = timezone.now() + timedelta(hours=2)
    email = outbox.enqueue("a@example.net", "s", html="<p>Hello <b>you</b></p>", send_at=later)
    assert email.text == "Hello you\n" and email.next_attempt_at == later


def test_send_after_commit_sends_the_callers_emails_once_committed(smtp_server):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            outbox.send_after_commit([outbox.enqueue("a@example.net", "rolled back", "x")])
            raise RuntimeError("the caller failed")
    with transaction.atomic():
        emails = [outbox.enqueue(f"{n}@example.net", "kept", "x") for n in "bc"]
        outbox.send_after_commit(emails)
        assert smtp_server.received == []
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == ["b@example.net", "c@example.net"]
    assert {e.status for e in emails} == {Status.SENT}  # refreshed in place


def test_send_at_once_sends_queued_emails_and_leaves_the_others(smtp_server):
    dropped = outbox.enqueue("not an address", "s", "t")
    queued = outbox.enqueue("a@example.net", "s", "t")
    assert outbox.send_at_once([dropped, queued]) == [dropped, queued]
    assert [m.rcpt_tos for m in smtp_server.received] == [["a@example.net"]]
    assert (queued.status, dropped.status) == (Status.SENT, Status.DROPPED)


def test_the_sites_own_addresses_are_its_from_and_server_addresses(settings):
    settings.DEFAULT_FROM_EMAIL, settings.SERVER_EMAIL = "Site <NoReply@Example.org>", "root@example.org"
    assert outbox.site_addresses() == {"noreply@example.org", "root@example.org"}
    assert outbox.enqueue("a@example.net", "s", "t", from_email="ROOT@example.org").account is None
