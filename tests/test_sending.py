import smtplib
from datetime import timedelta

import pytest
from django.utils import timezone

from dbmail.models import DeliveryEvent, TextOfEmail
from dbmail.send import loop as sending
from dbmail.send import retry, smtp
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


def test_unreachable_server_defers_the_batch_without_dropping_or_counting(settings):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens
    settings.DBMAIL_RECONNECT_TRIES = 2
    emails = TextOfEmailFactory.create_batch(4)
    result = sending.send_due()
    # Three connections tried (the first and two more after a pause), then the server is given up.
    assert result.server_unreachable and result.deferred == 4 and result.connect_failures == 3
    assert set(TextOfEmail.objects.values_list("status", flat=True)) == {Status.DEFERRED}
    rows = TextOfEmail.objects.filter(pk__in=[e.pk for e in emails])
    assert all("cannot connect to 127.0.0.1:9" in e.last_error and e.attempts == 0 for e in rows)
    (problem,) = result.problems
    assert (
        problem.startswith("office@example.org: cannot connect to 127.0.0.1:9: ") and "(4 emails deferred)" in problem
    )


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
    def outcome(exc, stage=None):
        if stage:
            exc.stage = stage
        got = retry.classify(exc)
        return got.status, got.counted

    # Answers about the recipient decide its fate, and count.
    assert outcome(smtplib.SMTPRecipientsRefused({"a@x": (550, b"no")})) == ("dropped", True)
    assert outcome(smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy")})) == ("deferred", True)
    assert outcome(smtp.MessageRefused(554, b"spam")) == ("dropped", True)
    assert outcome(smtp.MessageRefused(452, b"full")) == ("deferred", True)
    # The server's or the sender's failures never drop and never count.
    assert outcome(smtplib.SMTPRecipientsRefused({"a@x": (421, b"closing")})) == ("deferred", False)
    assert outcome(smtp.DataRefused(554, b"no")) == ("deferred", False)
    assert outcome(smtplib.SMTPSenderRefused(553, b"sender refused", "x@y"), "mail") == ("deferred", False)
    assert outcome(smtplib.SMTPSenderRefused(530, b"auth first", "x@y"), "mail") == ("deferred", False)
    assert outcome(smtplib.SMTPSenderRefused(503, b"nested MAIL", "x@y"), "mail") == ("deferred", False)
    assert outcome(smtplib.SMTPAuthenticationError(535, b"bad login"), "auth") == ("deferred", False)
    assert outcome(ConnectionRefusedError(111, "refused"), "connect") == ("deferred", False)
    assert retry.classify(ConnectionRefusedError(111, "refused")).reset_connection
    # Too big for the server, ever (MAIL FROM with SIZE): the message's fault.
    assert outcome(smtplib.SMTPSenderRefused(552, b"5.3.4 too big", "x@y"), "mail") == ("dropped", True)
    lost = retry.classify(smtp.AckLost("gone"))
    assert (lost.status, lost.counted, lost.possibly_delivered) == ("deferred", True, True)
    assert outcome(ValueError("Header values can't contain newlines")) == ("dropped", True)


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


# --- international addresses ---------------------------------------------------------------------


def test_a_named_idn_address_goes_out_in_a_labels(smtp_server):
    from dbmail.intake.outbox import enqueue

    email = enqueue(to="Ann <ann@bücher.example>", subject="Grüße", text="Hallo")
    assert email.status == Status.QUEUED
    assert sending.send_due().sent == 1
    (got,) = smtp_server.received
    assert got.rcpt_tos == ["ann@xn--bcher-kva.example"] and "SMTPUTF8" not in got.mail_options
    (to,) = got.message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ann", "ann@xn--bcher-kva.example") and got.data.isascii()


def test_a_utf8_local_part_goes_out_with_smtputf8(smtp_server):
    email = TextOfEmailFactory(to_address="jörg@exämple.org", to_name="Jörg Müller")
    assert sending.send_due().sent == 1
    (got,) = smtp_server.received
    assert "SMTPUTF8" in got.mail_options and got.rcpt_tos == ["jörg@xn--exmple-cua.org"]
    assert "<jörg@xn--exmple-cua.org>".encode() in got.data  # the header in UTF-8 (RFC 6532)
    email.refresh_from_db()
    assert email.status == Status.SENT


def test_a_utf8_local_part_with_attachments_keeps_its_utf8_header(smtp_server):
    from django.core.files.base import ContentFile

    from dbmail.models import RequestAttachment

    from .factories import MessageRequestFactory

    request = MessageRequestFactory(recipient_set="addresses")
    RequestAttachment.objects.create(request=request, file=ContentFile(b"%PDF", name="a.pdf"), filename="a.pdf", size=4)
    TextOfEmailFactory(request=request, to_address="jörg@exämple.org", to_name="Jörg")
    assert sending.send_due().sent == 1
    (got,) = smtp_server.received
    assert "SMTPUTF8" in got.mail_options
    to_line = next(line for line in got.data.split(b"\r\n") if line.startswith(b"To:"))
    assert to_line.endswith("<jörg@xn--exmple-cua.org>".encode())
    assert [p.get_filename() for p in got.message.iter_attachments()] == ["a.pdf"]


def test_without_smtputf8_a_utf8_local_part_is_dropped_saying_why(settings):
    server = SMTPServer(smtputf8=False).start()
    try:
        settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = server.host, server.port, 2
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        utf8 = TextOfEmailFactory(to_address="用户@例子.广告")
        idn = TextOfEmailFactory(to_address="ann@bücher.example", to_name="Ann")
        result = sending.send_due()
        assert (result.sent, result.dropped) == (1, 1)
        utf8.refresh_from_db()
        assert utf8.status == Status.DROPPED and "the server does not offer SMTPUTF8" in utf8.last_error
        assert "cannot build message" not in utf8.last_error
        assert [m.rcpt_tos for m in server.received] == [["ann@xn--bcher-kva.example"]]
        assert idn.message_id == server.received[0].message_id
    finally:
        server.stop()


def test_an_empty_address_never_goes_out_as_a_null_recipient(smtp_server):
    empty = TextOfEmailFactory(to_address="")
    fine = TextOfEmailFactory()
    result = sending.send_due()
    assert (result.sent, result.dropped) == (1, 1)
    empty.refresh_from_db()
    assert empty.status == Status.DROPPED and "no recipient address" in empty.last_error
    assert [m.rcpt_tos for m in smtp_server.received] == [[fine.to_address]]
    assert not [r for r in smtp_server.refused if r[0] in ("", "<>")]


def test_a_raw_forward_to_an_idn_address(smtp_server):
    raw = b"From: a@example.com\r\nTo: list@example.org\r\nSubject: fwd\r\n\r\nbody\r\n"
    email = TextOfEmailFactory(raw_message=raw, to_address="member@bücher.example")
    assert sending.send_due().sent == 1
    (got,) = smtp_server.received
    own = f"{TRACKING_HEADER}: {tracking_id(email.pk)}\r\n".encode()  # put first by the outbox
    assert got.rcpt_tos == ["member@xn--bcher-kva.example"] and got.data == own + raw


# --- one attempt per email per run; bodies a batch at a time -------------------------------------


def test_a_run_tries_each_email_once_however_short_the_retry_delay(smtp_server, settings):
    settings.DBMAIL_RETRY_BASE_SECONDS = settings.DBMAIL_RETRY_MAX_SECONDS = 1
    smtp_server.delay = 0.15  # each accepted message takes a while: the deferred ones come due mid-run
    busy = []
    for n in range(3):
        smtp_server.script(f"busy{n}@example.net", "451 4.3.0 busy")
        busy.append(TextOfEmailFactory(to_address=f"busy{n}@example.net"))
    TextOfEmailFactory.create_batch(12)  # about 1.8 s of sending after the busy ones were deferred
    result = sending.send_due(batch_size=2)
    assert (result.sent, result.deferred) == (12, 3)
    for email in busy:
        email.refresh_from_db()
        assert email.attempts == 1 and email.events.count() == 1
        assert email.next_attempt_at <= timezone.now()  # due again, and left for the next run all the same


def test_bodies_come_a_few_at_a_time_when_they_are_big(smtp_server, settings, monkeypatch):
    from dbmail.send import claims

    settings.DBMAIL_BATCH_MAX_BYTES = 1_000_000  # half of it per claim: the batch sent and the next
    claimed = []
    real_claim = claims.claim

    def counting_claim(*args, **kwargs):
        batch = real_claim(*args, **kwargs)
        claimed.append((len(batch.emails), batch.bytes))
        return batch

    monkeypatch.setattr(claims, "claim", counting_claim)
    big = [TextOfEmailFactory(text=("x" * 70 + "\n") * 4_225) for _ in range(5)]  # 300 kB each
    TextOfEmailFactory(raw_message=b"From: a@b.org\r\n\r\n" + (b"y" * 68 + b"\r\n") * 10_000)  # 700 kB
    small = TextOfEmailFactory.create_batch(3)
    result = sending.send_due(batch_size=100)
    assert result.sent == 9 and len(smtp_server.received) == 9
    # One big email a claim (two would pass the half), the one over the half alone, the small ones together.
    assert [n for n, _ in claimed if n] == [1, 1, 1, 1, 1, 1, 3]
    assert all(n == 1 or size <= 500_000 for n, size in claimed)
    assert {e.message_id for e in big + small} <= {m.message_id for m in smtp_server.received}
