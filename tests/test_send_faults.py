"""The fault matrix: every SMTP fault, with and without PIPELINING, against the real scripted server.

Three emails go out; the middle one (the "victim") is the one a
per-recipient fault concerns. After the first run each email must be where
the fault puts it; then the fault clears, everything waiting is made due,
and a second run must leave every email that was not rightly dropped sent,
exactly once (a lost acknowledgement excepted, which is counted). No email a
fault did not concern is ever dropped, and a server's or sender's failure
never counts as an attempt.
"""

from dataclasses import dataclass

import pytest
from django.utils import timezone

from dbmail import states
from dbmail.models import SendingProblem, TextOfEmail
from dbmail.send import loop as sending

from .factories import TextOfEmailFactory
from .smtpserver import SMTPServer

pytestmark = pytest.mark.django_db(transaction=True)
Status = TextOfEmail.Status
VICTIM = "victim@example.net"

# What the first run must leave: sent; deferred and counted; deferred and not counted (the server's or
# the sender's fault); dropped; deferred with the outcome unknown (the message went out, no answer came).
SENT, DEFERRED, NOT_COUNTED, DROPPED, UNKNOWN = "sent", "deferred", "not counted", "dropped", "unknown"


@dataclass(frozen=True)
class Fault:
    name: str
    stage: str
    steps: tuple
    victim: str  # the victim's state after the first run
    others: str = SENT  # the other two emails' state after the first run
    per_address: bool = False  # the fault is the victim's alone
    kept: bool = False  # the server kept the victim's message although its answer was lost
    reason: str = ""  # words the victim's last error must contain

    def __str__(self):
        return self.name


def everyone(name, stage, *steps, reason=""):
    """A fault at `stage` of every connection or transaction, until it clears."""
    return Fault(name, stage, steps, NOT_COUNTED, NOT_COUNTED, reason=reason)


def once(name, stage, step):
    """The same fault, once only: the sender's new connection gets through."""
    return Fault(name, stage, (step, "250"), SENT)


def victim(name, stage, step, state, kept=False, reason=""):
    return Fault(name, stage, (step,), state, per_address=True, kept=kept, reason=reason)


FAULTS = [
    # The connection and the session: never a recipient's fault.
    everyone("connect 421", "connect", "421 4.3.2 too busy", reason="cannot connect to"),
    everyone("connect 554", "connect", "554 5.3.2 go away", reason="554"),
    everyone("connect stall", "connect", "timeout", reason="timed out"),
    everyone("connect dropped", "connect", "disconnect", reason="cannot connect"),
    everyone("ehlo 421", "ehlo", "421 4.3.2 shutting down", reason="EHLO"),
    everyone("ehlo 550", "ehlo", "550 5.7.1 not you", reason="550"),
    everyone("ehlo stall", "ehlo", "timeout", reason="timed out"),
    once("connect 421 once", "connect", "421 4.3.2 too busy"),
    once("connect stall once", "connect", "timeout"),
    once("ehlo 421 once", "ehlo", "421 4.3.2 shutting down"),
    # The sender: MAIL FROM refused or deferred, whoever the recipient.
    everyone("mail 421", "mail", "421 4.3.2 closing", reason="MAIL FROM: 421"),
    everyone("mail 451", "mail", "451 4.3.0 local error", reason="MAIL FROM: 451"),
    everyone("mail 530", "mail", "530 5.7.0 authentication required", reason="MAIL FROM: 530"),
    everyone("mail 553", "mail", "553 5.7.1 sender refused", reason="MAIL FROM: 553"),
    everyone("mail 554", "mail", "554 5.7.1 policy", reason="MAIL FROM: 554"),
    everyone("mail stall", "mail", "timeout", reason="timed out"),
    everyone("mail dropped", "mail", "disconnect", reason="disconnected"),
    once("mail 421 once", "mail", "421 4.3.2 closing"),
    once("mail 451 once", "mail", "451 4.3.0 local error"),
    once("mail 503 once", "mail", "503 5.5.1 bad sequence of commands"),
    once("mail 553 once", "mail", "553 5.7.1 sender refused"),
    # DATA refused once the recipient was accepted: the session's fault, and the next MAIL must not meet a 503.
    everyone("data 421", "data", "421 4.3.2 closing", reason="DATA: 421"),
    everyone("data 451", "data", "451 4.3.0 try later", reason="DATA: 451"),
    everyone("data 554", "data", "554 5.7.1 no", reason="DATA: 554"),
    once("data 451 once", "data", "451 4.3.0 try later"),
    everyone("data stall", "data", "timeout", reason="timed out"),
    everyone("data dropped", "data", "disconnect", reason="disconnected"),
    victim("victim data 451", "data", "451 4.3.0 try later", NOT_COUNTED, reason="DATA: 451"),
    victim("victim data 554", "data", "554 5.7.1 no", NOT_COUNTED, reason="DATA: 554"),
    # RCPT TO: the recipient's own answer (a 421 excepted: the server is closing).
    victim("rcpt 421", "rcpt", "421 4.3.2 closing", NOT_COUNTED),
    victim("rcpt 450", "rcpt", "450 4.2.1 greylisted", DEFERRED, reason="greylisted"),
    victim("rcpt 451", "rcpt", "451 4.3.0 try later", DEFERRED, reason="try later"),
    victim("rcpt 452", "rcpt", "452 4.2.2 mailbox full", DEFERRED, reason="mailbox full"),
    victim("rcpt 550", "rcpt", "550 5.1.1 no such user", DROPPED, reason="no such user"),
    victim("rcpt 553", "rcpt", "553 5.1.3 bad address", DROPPED, reason="bad address"),
    victim("rcpt 554", "rcpt", "554 5.7.1 relay denied", DROPPED, reason="relay denied"),
    victim("rcpt stall", "rcpt", "timeout", NOT_COUNTED, reason="timed out"),
    victim("rcpt dropped", "rcpt", "disconnect", NOT_COUNTED, reason="disconnected"),
    # After the final dot of a one-recipient transaction: about this recipient.
    victim("message 421", "message", "421 4.3.2 closing", NOT_COUNTED),
    victim("message 451", "message", "451 4.3.0 try later", DEFERRED, reason="try later"),
    victim("message 452", "message", "452 4.3.1 out of storage", DEFERRED, reason="out of storage"),
    victim("message 550", "message", "550 5.7.1 content refused", DROPPED, reason="content refused"),
    victim("message 552", "message", "552 5.2.2 over quota", DROPPED, reason="over quota"),
    victim("message 554", "message", "554 5.7.1 spam", DROPPED, reason="spam"),
    # The message went out whole and the answer was lost: possibly delivered, retried, counted.
    victim("message dropped", "message", "disconnect", UNKNOWN, reason="outcome unknown (possibly delivered)"),
    victim("ack lost", "message", "ack-lost", UNKNOWN, kept=True, reason="outcome unknown (possibly delivered)"),
    victim("ack too late", "message", "late", UNKNOWN, kept=True, reason="outcome unknown (possibly delivered)"),
    victim("message stall", "message", "timeout", UNKNOWN, reason="outcome unknown (possibly delivered)"),
    # An answer that is no SMTP reply (a garbled code) or none a recipient can get (3xx, 6xx) says nothing
    # about the recipient: to RCPT, the session's fault; after the final dot, the outcome is unknown.
    everyone("connect garbled", "connect", "hello there", reason="not an SMTP reply"),
    everyone("ehlo garbled", "ehlo", "hello there", reason="not an SMTP reply"),
    everyone("mail garbled", "mail", "hello there", reason="MAIL FROM: not an SMTP reply"),
    everyone("data garbled", "data", "hello there", reason="DATA: not an SMTP reply"),
    victim("rcpt garbled", "rcpt", "hello there", NOT_COUNTED, reason="not an SMTP reply"),
    victim("rcpt 354", "rcpt", "354 go ahead", NOT_COUNTED, reason="354"),
    victim("rcpt 650", "rcpt", "650 5.1.1 who knows", NOT_COUNTED, reason="650"),
    victim("message garbled", "message", "hello there", UNKNOWN, reason="outcome unknown (possibly delivered)"),
    victim("message 354", "message", "354 again", UNKNOWN, reason="outcome unknown (possibly delivered)"),
    # More of the codes real servers give.
    everyone("mail 452", "mail", "452 4.3.1 insufficient system storage", reason="MAIL FROM: 452"),
    everyone("mail 550", "mail", "550 5.7.1 sender blocked", reason="MAIL FROM: 550"),
    victim("rcpt 551", "rcpt", "551 5.1.6 user has moved", DROPPED, reason="user has moved"),
    victim("rcpt 552", "rcpt", "552 5.2.2 mailbox full", DROPPED, reason="mailbox full"),
    victim("message 250 text", "message", "250 2.0.0 fine", SENT),
]


@pytest.fixture(params=[True, False], ids=["pipelining", "classic"])
def server(request, settings):
    srv = SMTPServer(pipelining=request.param, timeout_seconds=2.0).start()
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = srv.host, srv.port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 0.5
    settings.DBMAIL_RECONNECT_TRIES, settings.DBMAIL_RECONNECT_DELAY_SECONDS = 2, 0.05
    yield srv
    srv.stop()


def make_due():
    TextOfEmail.objects.filter(status__in=states.WAITING).update(next_attempt_at=timezone.now())


def state(email):
    email.refresh_from_db()
    if email.status == Status.DEFERRED:
        if email.possibly_delivered:
            return UNKNOWN
        return DEFERRED if email.attempts == 1 else NOT_COUNTED if email.attempts == 0 else f"attempts {email.attempts}"
    return email.status


@pytest.mark.parametrize("fault", FAULTS, ids=str)
def test_each_email_ends_where_the_fault_puts_it(server, fault):
    first = TextOfEmailFactory(to_address="first@example.net")
    hit = TextOfEmailFactory(to_address=VICTIM)
    last = TextOfEmailFactory(to_address="last@example.net")
    if fault.per_address:
        server.script(VICTIM, *fault.steps, stage=fault.stage)
    else:
        server.fault(fault.stage, *fault.steps)

    result = sending.send_due()
    assert (state(first), state(hit), state(last)) == (fault.others, fault.victim, fault.others)
    assert fault.reason in hit.last_error
    assert Status.DROPPED not in (first.status, last.status)  # never for a fault that was not theirs
    if fault.victim == UNKNOWN:
        assert hit.possibly_delivered == 1 and result.possibly_delivered == 1
    # A server or sender failure that deferred mail is reported once, in words, and kept for dbmail_status.
    if NOT_COUNTED in (fault.victim, fault.others):
        (problem,) = result.problems
        assert fault.reason in problem or fault.victim == NOT_COUNTED
        assert SendingProblem.objects.filter(resolved_at__isnull=True).count() == 1
    else:
        assert result.problems == [] and not SendingProblem.objects.exists()

    server.clear_faults()
    make_due()
    again = sending.send_due()
    assert again.problems == []
    expected = {e.message_id for e in (first, hit, last) if e.status != Status.DROPPED}
    assert {m.message_id for m in server.received} == expected
    assert set(TextOfEmail.objects.exclude(status=Status.DROPPED).values_list("status", flat=True)) == {Status.SENT}
    copies = [m.message_id for m in server.received].count(hit.message_id)
    assert copies == (2 if fault.kept else int(fault.victim != DROPPED))  # a lost answer's duplicate is the only one
    assert len(server.received) == len(expected) + int(fault.kept)
    assert not SendingProblem.objects.filter(resolved_at__isnull=True).exists()  # the next run that worked clears it


# --- the session's other steps: AUTH and STARTTLS ---------------------------------------------


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback only
def test_auth_refused_or_missing_defers_without_counting_until_the_credentials_work(settings):
    server = SMTPServer(logins={"mailer": "right-password"}).start()
    try:
        settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = server.host, server.port, 2
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        emails = TextOfEmailFactory.create_batch(3)
        settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "mailer", "wrong-password"
        refused = sending.send_due()
        assert {state(e) for e in emails} == {NOT_COUNTED}
        assert "AUTH: 535" in refused.problems[0] and "(3 emails deferred)" in refused.problems[0]
        problem = SendingProblem.objects.get()
        assert (problem.stage, problem.smtp_code, problem.resolved_at) == ("auth", 535, None)

        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""  # the relay wants AUTH: 530 to MAIL FROM
        make_due()
        missing = sending.send_due()
        assert {state(e) for e in emails} == {NOT_COUNTED} and "MAIL FROM: 530" in missing.problems[0]

        settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "mailer", "right-password"
        make_due()
        assert sending.send_due().sent == 3 and len(server.received) == 3
        assert SendingProblem.objects.get().resolved_at is not None
    finally:
        server.stop()


def test_starttls_the_server_does_not_offer_defers_that_accounts_mail_only(server):
    from .factories import SenderAccountFactory

    strict = SenderAccountFactory(
        address="tls@example.org", smtp_host=server.host, smtp_port=server.port, smtp_use_tls=True
    )
    mine = TextOfEmailFactory(account=strict, envelope_sender=strict.address)
    other = TextOfEmailFactory()
    result = sending.send_due()
    assert (state(mine), state(other)) == (NOT_COUNTED, SENT)
    assert "STARTTLS" in mine.last_error and len(result.problems) == 1
    assert SendingProblem.objects.get().account == strict

    strict.smtp_use_tls = False
    strict.save()
    make_due()
    assert sending.send_due().sent == 1 and state(mine) == SENT


# --- a sender refused, a message too big, and how often the sender tries again -------------------


def test_a_refused_sender_defers_its_own_mail_and_no_other_accounts(server):
    from .factories import SenderAccountFactory

    club = SenderAccountFactory(address="club@example.org")
    server.script("club@example.org", "553 5.7.1 not allowed to send as club@example.org", stage="mail")
    theirs = [TextOfEmailFactory(account=club, envelope_sender=club.address) for _ in range(5)]
    ours = TextOfEmailFactory.create_batch(3)
    result = sending.send_due()
    assert {state(e) for e in theirs} == {NOT_COUNTED} and {state(e) for e in ours} == {SENT}
    (problem,) = result.problems
    assert problem.startswith(f"club@example.org via {server.host}:{server.port}: MAIL FROM: 553")
    assert "(5 emails deferred)" in problem
    # Three transactions (one email tried twice, one once), then that account's route was given up.
    assert len([r for r in server.refused if "not allowed" in r[1]]) == 3


def test_a_message_bigger_than_the_server_takes_is_dropped_alone(settings):
    server = SMTPServer(max_size=50_000).start()
    try:
        settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = server.host, server.port, 2
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        small = TextOfEmailFactory()
        big = TextOfEmailFactory(text="x" * 100_000)
        after = TextOfEmailFactory()
        result = sending.send_due()
        assert (state(small), state(big), state(after)) == (SENT, DROPPED, SENT)
        assert "too big for the server: 552" in big.last_error and result.problems == []
    finally:
        server.stop()


def test_reconnects_after_a_pause_that_doubles_then_gives_up(server, settings):
    import time

    settings.DBMAIL_RECONNECT_TRIES, settings.DBMAIL_RECONNECT_DELAY_SECONDS = 2, 0.3
    server.fault("connect", "421 4.3.2 too busy")
    TextOfEmailFactory.create_batch(3)
    started = time.monotonic()
    result = sending.send_due()
    took = time.monotonic() - started
    assert server.connections == 3 and result.connect_failures == 3  # the first, then after 0.3 s and 0.6 s
    assert 0.9 <= took < 3
    settings.DBMAIL_RECONNECT_TRIES = 0
    make_due()
    server.connections = 0
    sending.send_due()
    assert server.connections == 1


def test_a_server_fault_is_reported_once_however_many_emails_it_defers(server):
    import io

    from django.core.management import call_command

    server.fault("mail", "553 5.7.1 sender refused")
    emails = TextOfEmailFactory.create_batch(230)  # three batches
    out = io.StringIO()
    call_command("dbmail_cron", stdout=out, stderr=io.StringIO())
    lines = out.getvalue().splitlines()
    assert "deferred 230" in lines[0]
    assert [line for line in lines if "sending problem" in line] == [
        f"  sending problem: office@example.org via {server.host}:{server.port}: MAIL FROM: 553 5.7.1 sender refused"
        " (230 emails deferred)"
    ]
    assert len(lines) == 2  # no line per email: the emails were not at fault
    assert len(server.refused) == 3  # three transactions, then the account's route was given up
    assert not TextOfEmail.objects.filter(pk__in=[e.pk for e in emails]).exclude(attempts=0).exists()


# --- a lost acknowledgement, from the wire to the log ---------------------------------------------


@pytest.mark.parametrize("step", ["ack-lost", "late"])
def test_a_lost_answer_is_recorded_as_possibly_delivered_and_sent_again(server, step):
    from dbmail.models import DeliveryEvent

    server.script(VICTIM, step, "250")
    email = TextOfEmailFactory(to_address=VICTIM)
    result = sending.send_due()
    assert (result.deferred, result.possibly_delivered) == (1, 1)
    email.refresh_from_db()
    assert email.status == Status.DEFERRED and email.attempts == 1 and email.possibly_delivered == 1
    (event,) = email.events.all()
    assert event.kind == DeliveryEvent.Kind.ATTEMPT and event.text.startswith("outcome unknown (possibly delivered)")
    assert len(server.to(VICTIM)) == 1  # the server had it all along
    make_due()
    assert sending.send_due().sent == 1
    email.refresh_from_db()
    assert email.status == Status.SENT and email.possibly_delivered == 1 and len(server.to(VICTIM)) == 2


def test_a_disconnect_before_the_message_went_out_is_no_possible_delivery(server):
    server.script(VICTIM, "disconnect", stage="rcpt")
    email = TextOfEmailFactory(to_address=VICTIM)
    assert sending.send_due().possibly_delivered == 0
    email.refresh_from_db()
    assert email.possibly_delivered == 0 and "outcome unknown" not in email.last_error


@pytest.mark.parametrize("reply", ["502 5.5.2 EHLO not implemented", "500 5.5.1 what?", "550 5.7.1 not you"])
def test_a_server_that_refuses_ehlo_but_takes_helo_gets_every_email(server, reply):
    server.helo_after_ehlo = True
    server.fault("ehlo", reply)
    emails = [TextOfEmailFactory(to_address=f"r{i}@example.net") for i in range(3)]
    result = sending.send_due()
    assert [state(e) for e in emails] == [SENT] * 3, [e.last_error for e in emails]
    assert result.problems == [] and len(server.received) == 3
