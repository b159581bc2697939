import smtplib
from datetime import timedelta

import pytest
from django.utils import timezone

from dbmail.models import DeliveryEvent, TextOfEmail
from dbmail.send import loop as sending
from dbmail.send import retry
from dbmail.track.header import TRACKING_HEADER, tracking_id

from .factories import SenderAccountFactory, TextOfEmailFactory
from .smtpserver import SMTPServer

# Transactional: on PostgreSQL outcomes are committed by a writer thread with its own connection.
pytestmark = pytest.mark.django_db(transaction=True)
Status = TextOfEmail.Status


def make_due(*emails):
    TextOfEmail.objects.filter(pk__in=[e.pk for e in emails]).update(next_attempt_at=timezone.now())


def test_sends_each_queued_email_once_and_records_the_reply(smtp_server):
    emails = TextOfEmailFactory.create_batch(5)
    result = sending.send_due()
    assert (result.sent, result.deferred, result.dropped) == (5, 0, 0)
    assert sorted(m.message_id for m in smtp_server.received) == sorted(e.message_id for e in emails)
    for email in emails:
        email.refresh_from_db()
        assert email.status == Status.SENT and email.sent_at and email.attempts == 1
        assert email.claim_token is None and email.leased_until is None
        event = email.events.get()
        assert event.kind == DeliveryEvent.Kind.ATTEMPT and event.smtp_code == 250
        assert "queued as Q" in event.text  # the MTA's queue id, for log matching
    assert sending.send_due().attempted == 0  # nothing is sent twice


def test_envelope_and_headers_come_from_the_row(smtp_server):
    email = TextOfEmailFactory(
        to_address="ann@example.net",
        to_name="Ann Smith",
        envelope_sender="bounces@example.org",
        reply_to="help@example.org",
        html="<p>Hi</p>",
        headers={"X-Campaign": "spring"},
    )
    sending.send_due()
    (got,) = smtp_server.received
    assert got.mail_from == "bounces@example.org"
    assert got.rcpt_tos == ["ann@example.net"]
    msg = got.message
    assert msg["From"] == email.from_header
    assert msg["To"] == "Ann Smith <ann@example.net>"
    assert msg["Reply-To"] == "help@example.org"
    assert msg["X-Campaign"] == "spring"
    assert msg["Message-ID"] == email.message_id
    assert msg.get_body(("html",)).get_content().strip() == "<p>Hi</p>"


def test_temporary_failure_defers_with_backoff_then_sends(smtp_server):
    smtp_server.script("slow@example.net", "451 4.3.0 try later", "250")
    email = TextOfEmailFactory(to_address="slow@example.net")
    before = timezone.now()
    assert sending.send_due().deferred == 1
    email.refresh_from_db()
    assert email.status == Status.DEFERRED and "try later" in email.last_error
    assert before + timedelta(seconds=299) <= email.next_attempt_at <= timezone.now() + timedelta(seconds=301)
    assert sending.send_due().attempted == 0  # not due yet
    make_due(email)
    assert sending.send_due().sent == 1
    email.refresh_from_db()
    assert email.status == Status.SENT and email.attempts == 2 and email.last_error == ""
    assert [e.smtp_code for e in email.events.all()] == [451, 250]


@pytest.mark.parametrize("answer", ["550 5.1.1 no such user", "553 5.1.3 bad address"])
def test_permanent_failure_drops_and_the_rest_still_goes(smtp_server, answer):
    smtp_server.script("gone@example.net", answer)
    bad = TextOfEmailFactory(to_address="gone@example.net")
    good = TextOfEmailFactory.create_batch(3)
    result = sending.send_due()
    assert (result.sent, result.dropped) == (3, 1)
    bad.refresh_from_db()
    assert bad.status == Status.DROPPED and answer.split(" ", 1)[1] in bad.last_error
    assert len(smtp_server.received) == 3 and {m.message_id for m in smtp_server.received} == {
        e.message_id for e in good
    }


@pytest.mark.parametrize("answer", ["421 4.7.0 closing", "452 4.2.2 mailbox full"])
def test_4xx_at_rcpt_defers_and_later_mail_still_goes(smtp_server, answer):
    smtp_server.script("full@example.net", answer)
    bad = TextOfEmailFactory(to_address="full@example.net")
    TextOfEmailFactory.create_batch(3)
    result = sending.send_due()
    assert (result.sent, result.deferred) == (3, 1)
    bad.refresh_from_db()
    assert bad.status == Status.DEFERRED


@pytest.mark.parametrize("step", ["disconnect", "timeout"])
def test_broken_connection_defers_only_that_email(smtp_server, step, settings):
    smtp_server.timeout_seconds = 4
    settings.EMAIL_TIMEOUT = 1
    smtp_server.script("flaky@example.net", step)
    first = TextOfEmailFactory(to_address="a@example.net")
    bad = TextOfEmailFactory(to_address="flaky@example.net")
    after = TextOfEmailFactory.create_batch(2)
    result = sending.send_due()
    assert (result.sent, result.deferred, result.dropped) == (3, 1, 0)
    bad.refresh_from_db()
    assert bad.status == Status.DEFERRED and bad.last_error
    delivered = {m.message_id for m in smtp_server.received}
    assert delivered == {first.message_id, *(e.message_id for e in after)}
    assert result.connections == 2  # reconnected after the broken conversation


def test_too_many_attempts_drops(smtp_server, settings):
    settings.DBMAIL_MAX_ATTEMPTS = 3
    smtp_server.script("slow@example.net", "451 4.3.0 later")
    email = TextOfEmailFactory(to_address="slow@example.net")
    for _ in range(3):
        make_due(email)
        sending.send_due()
    email.refresh_from_db()
    assert email.status == Status.DROPPED and email.attempts == 3
    assert "too many attempts" in email.last_error


def test_unreachable_server_defers_the_batch_without_dropping(settings):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens
    emails = TextOfEmailFactory.create_batch(4)
    result = sending.send_due()
    assert result.server_unreachable and result.deferred == 4 and result.connect_failures == 1
    assert set(TextOfEmail.objects.values_list("status", flat=True)) == {Status.DEFERRED}
    assert all("cannot connect" in e.last_error for e in TextOfEmail.objects.filter(pk__in=[e.pk for e in emails]))


def test_a_message_that_cannot_be_built_is_dropped_alone(smtp_server):
    broken = TextOfEmailFactory(headers={"X-Bad": "line one\nBcc: victim@example.com"})
    fine = TextOfEmailFactory()
    result = sending.send_due()
    assert (result.sent, result.dropped) == (1, 1)
    broken.refresh_from_db()
    assert broken.status == Status.DROPPED and "cannot build message" in broken.last_error
    assert [m.message_id for m in smtp_server.received] == [fine.message_id]
    assert all("victim@example.com" not in m.rcpt_tos for m in smtp_server.received)


def test_raw_message_is_sent_byte_for_byte(smtp_server):
    raw = (
        b"From: Ann <ann@example.com>\nTo: list@example.org\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
        b"Message-ID: <orig@example.com>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
        b"line\n.leading dot\n"
    )
    email = TextOfEmailFactory(raw_message=raw, to_address="member@example.net")
    assert sending.send_due().sent == 1
    (got,) = smtp_server.received
    assert got.rcpt_tos == ["member@example.net"]
    # Byte for byte after the one field the outbox puts first: the email's own tracking header.
    assert got.data.replace(b"\r\n", b"\n") == f"{TRACKING_HEADER}: {tracking_id(email.pk)}\n".encode() + raw


def test_sender_account_with_its_own_server(smtp_server):
    own = SMTPServer().start()
    try:
        account = SenderAccountFactory(address="club@example.org", smtp_host=own.host, smtp_port=own.port)
        mine = TextOfEmailFactory(account=account, envelope_sender=account.address)
        site = TextOfEmailFactory()
        assert sending.send_due().sent == 2
        assert [m.message_id for m in own.received] == [mine.message_id]
        assert [m.message_id for m in smtp_server.received] == [site.message_id]
    finally:
        own.stop()


def test_max_messages_limits_the_run(smtp_server):
    TextOfEmailFactory.create_batch(7)
    assert sending.send_due(max_messages=3, batch_size=2).attempted == 3
    assert TextOfEmail.objects.filter(status=Status.QUEUED).count() == 4
    assert not TextOfEmail.objects.filter(status=Status.SENDING).exists()


def test_stop_flag_releases_what_was_not_sent(smtp_server):
    TextOfEmailFactory.create_batch(5)
    sender = sending.Sender(batch_size=5)

    def stop_after_two(email, outcome):
        if sender.result.attempted == 2:
            sender.stopping = True

    sender.on_outcome = stop_after_two
    assert sender.run().attempted == 2
    assert TextOfEmail.objects.filter(status=Status.QUEUED, attempts=0).count() == 3


def test_throttle_spaces_messages(monkeypatch):
    clock = {"now": 100.0}
    slept = []
    monkeypatch.setattr(sending.time, "monotonic", lambda: clock["now"])

    def fake_sleep(seconds):
        slept.append(round(seconds, 3))
        clock["now"] += seconds

    monkeypatch.setattr(sending.time, "sleep", fake_sleep)
    throttle = sending.Throttle(4)  # 4 per second
    for _ in range(5):
        throttle.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    assert sending.Throttle(0).interval == 0


def test_classify_covers_the_smtp_answers():
    assert retry.classify(smtplib.SMTPRecipientsRefused({"a@x": (550, b"no")})).status == "dropped"
    assert retry.classify(smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy")})).status == "deferred"
    assert retry.classify(smtplib.SMTPDataError(554, b"spam")).status == "dropped"
    assert retry.classify(smtplib.SMTPSenderRefused(451, b"later", "x@y")).status == "deferred"
    auth = retry.classify(smtplib.SMTPAuthenticationError(535, b"bad login"))
    assert auth.status == "deferred" and auth.server_down  # our fault, not the message's
    assert retry.classify(ConnectionRefusedError(111, "refused")).reset_connection
    assert retry.classify(ValueError("Header values can't contain newlines")).status == "dropped"


def test_backoff_doubles_and_is_capped(settings):
    settings.DBMAIL_RETRY_BASE_SECONDS, settings.DBMAIL_RETRY_MAX_SECONDS = 300, 3600
    assert [retry.backoff(n).total_seconds() for n in (1, 2, 3, 4, 5, 50)] == [300, 600, 1200, 2400, 3600, 3600]


def test_a_raw_email_from_the_database_goes_through_any_backend(settings, mailoutbox):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    raw = b"From: a@example.com\r\nTo: list@example.org\r\nSubject: fwd\r\n\r\nbody\r\n"
    email = TextOfEmailFactory(raw_message=raw, to_address="member@example.net")
    assert sending.send_due().sent == 1
    (message,) = mailoutbox
    own = f"{TRACKING_HEADER}: {tracking_id(email.pk)}\r\n".encode()
    assert message.message().as_bytes(linesep="\r\n") == own + raw
