"""End to end through a real Postfix (tests/postfix.py): what operators run, not a stand-in for it.

Outbound: dbmail_cron submits to a private Postfix on loopback, which relays
to the scripted sink; the bytes, the DKIM signature, the queue id, Postfix's
own bounces (routed back into the gate as docs/mta.md says) and its
deferrals are checked at the far end. Inbound: mail to a list address is
accepted by that Postfix and piped into the gate with docs/mta.md's own
master.cf service and transport map (read from the page itself).
"""

import re
import smtplib
import time

import dkim as dkimpy
import pytest

from dbmail.models import DeliveryEvent, Suppression, TextOfEmail
from dbmail.ops import dkimkeys
from dbmail.send import mime
from dbmail.track import mta_ids
from dbmail.track.consume import consume
from mailgate.models import Bounce, InboundMessage

from .conftest import manage, subprocess_env
from .dnsstub import StubDNS
from .factories import EmailListFactory, MessageRequestFactory, UserFactory, mail_fixture
from .postfix import AUTHSERV_ID, GATE_MAX_BYTES, LIST_DOMAIN, MESSAGE_SIZE_LIMIT, QUEUE_ID

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Status = TextOfEmail.Status


def wait_for(condition, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cron(mta):
    """`manage.py dbmail_cron` in its own process, submitting to the private Postfix."""
    env = subprocess_env(EMAIL_URL=f"smtp://{mta.host}:{mta.port}", EMAIL_TIMEOUT=5, DBMAIL_VERP_DOMAIN=LIST_DOMAIN)
    done = manage("dbmail_cron", env=env, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    return done


def split(data):
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def without_trace(data):
    """The message as it left us: the Received field Postfix puts on top removed."""
    assert data.startswith(b"Received: from "), data[:200]
    match = re.match(rb"Received: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*", data)
    return data[match.end() :]


def field_names(head):
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line and line[:1] not in b" \t"]


def queue_id_of(email):
    (attempt,) = email.events.filter(kind=DeliveryEvent.Kind.ATTEMPT)
    assert attempt.smtp_code == 250, attempt.text
    match = QUEUE_ID.search(attempt.text)
    assert match, attempt.text
    return match.group(1)


def send_to_list(mta, data, recipient=f"physics@{LIST_DOMAIN}", sender="ann@example.com"):
    with smtplib.SMTP(mta.host, mta.port, timeout=10) as client:
        client.sendmail(sender, [recipient], data)


# --- outbound: dbmail_cron -> Postfix -> the sink ---------------------------------------------


def test_request_mail_arrives_once_byte_for_byte_signed_with_postfix_queue_ids(postfix, postfix_sink):
    dns = StubDNS()
    key = dkimkeys.generate("example.org")
    dns.publish(key)
    UserFactory.create_batch(6)
    MessageRequestFactory()  # from office@example.org to every active user

    cron(postfix)
    assert postfix.wait_idle(), postfix.log()
    wait_for(lambda: len(postfix_sink.received) >= 6, what="six messages at the sink")
    time.sleep(0.3)  # nothing more comes: every message once
    emails = {e.message_id: e for e in TextOfEmail.objects.all()}
    assert len(emails) == 6
    received = {m.message_id: m for m in postfix_sink.received}
    assert len(postfix_sink.received) == 6 and received.keys() == emails.keys()

    # Our pipelined session (MAIL, RCPT, DATA of the next message with this one's dot) as Postfix saw it.
    assert "improper command pipelining" not in postfix.log(full=True)
    (session,) = postfix.wait_log(r"disconnect from .* ehlo=1 mail=6 rcpt=6 data=6 .*commands=")
    assert "rset" not in session, session

    queue_ids = set()
    for message_id, email in emails.items():
        email.refresh_from_db()
        assert email.status == Status.SENT and email.attempts == 1
        got = received[message_id]
        assert got.rcpt_tos == [email.to_address] and got.mail_from == email.envelope_sender
        sent = without_trace(got.data)
        built_head, built_body = split(mime.compose(email, sign=False))
        head, body = split(sent)
        assert body == built_body  # byte for byte: no 8-bit conversion, no folding, nothing added
        assert field_names(head) == [b"dkim-signature", *field_names(built_head)]  # Postfix added no header
        assert dkimpy.verify(got.data, dnsfunc=dns.dkim_lookup), got.data[:600]
        assert not dkimpy.verify(got.data.replace(b"Dear", b"Deer", 1), dnsfunc=dns.dkim_lookup)
        # The id Postfix named in "250 2.0.0 Ok: queued as X" is the one its log files this message under.
        queue_id = queue_id_of(email)
        assert postfix.wait_log(rf"{queue_id}: message-id={re.escape(message_id)}"), postfix.log()
        assert postfix.wait_log(rf"{queue_id}: to=<{re.escape(email.to_address)}>.* status=sent"), postfix.log()
        assert mta_ids.message_id_for_queue_id(queue_id, None) == message_id
        queue_ids.add(queue_id)
    assert len(queue_ids) == 6


def test_a_refusal_at_the_far_end_comes_back_as_postfix_dsn_and_marks_the_email_bounced(postfix_gate, postfix_sink):
    postfix_sink.script("gone@example.net", "550 5.1.1 <gone@example.net>: no such user")
    UserFactory(email="gone@example.net")
    UserFactory(email="here@example.net")
    MessageRequestFactory()

    cron(postfix_gate)
    gone = TextOfEmail.objects.get(to_address="gone@example.net")
    here = TextOfEmail.objects.get(to_address="here@example.net")
    assert gone.status == Status.SENT  # Postfix took it; the refusal comes later, as a DSN
    # Postfix's bounce goes to the VERP sender, bounces+<id>.<sig>@lists.example.org, and so to the gate.
    delivered = postfix_gate.wait_log(r"to=<bounces\+[^>]+>, relay=mailgate, .*status=sent")
    assert delivered, postfix_gate.log()
    assert postfix_gate.wait_idle(), postfix_gate.log()

    inbound = InboundMessage.objects.get()
    assert inbound.status == InboundMessage.Status.BOUNCE
    assert inbound.envelope_sender == ""  # Postfix's MAILER-DAEMON: the null sender
    bounce = Bounce.objects.get()
    assert bounce.email_id == gone.pk and bounce.bounce_type == "hard"
    assert "550 5.1.1" in bounce.diagnostic
    consume()  # dbmail_track applies what the gate queued
    gone.refresh_from_db()
    here.refresh_from_db()
    assert gone.status == Status.BOUNCED and here.status == Status.SENT
    assert Suppression.objects.filter(address="gone@example.net").exists()
    assert [m.rcpt_tos for m in postfix_sink.received] == [["here@example.net"]]  # the DSN stayed with us


@pytest.mark.parametrize(
    "fault",
    [("rcpt", "451 4.3.0 <slow@example.net>: try later"), ("connect", "421 4.3.2 too busy")],
    ids=["451-at-rcpt", "421-greeting"],
)
def test_a_temporary_refusal_at_the_far_end_is_postfix_to_retry_not_us(postfix, postfix_sink, fault):
    stage, answer = fault
    if stage == "rcpt":
        postfix_sink.script("slow@example.net", answer, answer, "250")
    else:
        postfix_sink.fault("connect", answer, answer, "250")
    UserFactory(email="slow@example.net")
    MessageRequestFactory()

    cron(postfix)
    email = TextOfEmail.objects.get()
    assert email.status == Status.SENT and email.attempts == 1  # handed over once; the retrying is Postfix's
    queue_id = queue_id_of(email)
    assert len(postfix.wait_log(rf"{queue_id}: .*status=deferred", count=2, flush_every=3)) == 2, postfix.log()
    assert postfix.wait_log(rf"{queue_id}: to=<slow@example.net>.* status=sent", flush_every=3), postfix.log()
    assert postfix.wait_idle()
    (got,) = postfix_sink.received
    assert got.message_id == email.message_id
    email.refresh_from_db()
    assert email.status == Status.SENT and email.attempts == 1
    assert email.events.filter(kind=DeliveryEvent.Kind.ATTEMPT).count() == 1


# --- inbound: Postfix -> pipe(8) -> mailgate/pipe.py -------------------------------------------


def test_list_mail_through_postfix_reaches_the_gate_and_the_forward_the_sink(postfix_gate, postfix_sink):
    EmailListFactory(regex="physics", users=[UserFactory(email="member@example.net")])
    raw = mail_fixture("plain.eml")
    send_to_list(postfix_gate, raw)

    wait_for(lambda: postfix_sink.to("member@example.net"), what="the forward at the sink")
    assert postfix_gate.wait_log(r"to=<physics@lists\.example\.org>, relay=mailgate, .*status=sent")
    inbound = InboundMessage.objects.get()
    assert inbound.status == InboundMessage.Status.FORWARDED, inbound.note
    assert inbound.envelope_recipient == f"physics@{LIST_DOMAIN}"
    assert inbound.envelope_sender == "ann@example.com"
    assert split(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))[1].replace(b"\r\n", b"\n") in bytes(
        inbound.raw
    ).replace(b"\r\n", b"\n")
    (forward,) = postfix_sink.to("member@example.net")
    assert forward.message["List-Id"]


def test_a_forged_authentication_results_of_our_mta_is_removed_by_the_documented_header_check(
    postfix_gate, postfix_sink
):
    """Without docs/mta.md's header check the gate would read the forged field as our MTA's own and
    forward a stranger's claim (tests/test_mailgate_policy.py: our MTA's Authentication-Results prove)."""
    from mailgate.models import EmailList

    EmailListFactory(
        regex="physics", posting_policy=EmailList.Policy.MEMBERS, users=[UserFactory(email="ann@example.com")]
    )
    forged = [
        f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from=example.com",
        f"Authentication-Results:   {AUTHSERV_ID.upper()}  (forged); dkim=pass header.d=example.com",
    ]
    send_to_list(postfix_gate, "\r\n".join(forged).encode() + b"\r\n" + mail_fixture("plain.eml"))

    assert postfix_gate.wait_log(r"to=<physics@lists\.example\.org>, relay=mailgate, .*status=sent")
    inbound = InboundMessage.objects.get()
    assert b"dmarc=pass" not in bytes(inbound.raw) and b"dkim=pass" not in bytes(inbound.raw)
    assert inbound.status == InboundMessage.Status.HELD, inbound.note
    assert f"no Authentication-Results of {AUTHSERV_ID}" in inbound.note
    assert not postfix_sink.received


def test_a_plus_address_reaches_the_gate_whole(postfix_gate, postfix_sink):
    # recipient_delimiter = + (docs/mta.md): the route of unsubscribe@ serves unsubscribe+<token>@ too.
    send_to_list(postfix_gate, mail_fixture("plain.eml"), recipient=f"unsubscribe+abc123@{LIST_DOMAIN}")
    assert postfix_gate.wait_log(r"relay=mailgate, .*status=(sent|bounced)"), postfix_gate.log()
    wait_for(InboundMessage.objects.exists, what="the stored message")
    assert InboundMessage.objects.get().envelope_recipient == f"unsubscribe+abc123@{LIST_DOMAIN}"


def test_the_database_unreachable_makes_postfix_defer_and_retry_not_bounce(postfix_gate, postfix_sink):
    EmailListFactory(regex="physics", users=[UserFactory(email="member@example.net")])
    postfix_gate.db_proxy.stop()
    try:
        send_to_list(postfix_gate, mail_fixture("plain.eml"))
        deferred = postfix_gate.wait_log(r"relay=mailgate, .*status=deferred", count=2, flush_every=3)
        assert len(deferred) == 2, postfix_gate.log()  # tried again, still kept
        assert "temporary failure" in deferred[0]
        assert postfix_gate.queue() and not postfix_sink.received and not InboundMessage.objects.exists()
    finally:
        postfix_gate.db_proxy.start()
    assert postfix_gate.wait_log(r"relay=mailgate, .*status=sent", flush_every=2), postfix_gate.log()
    wait_for(lambda: postfix_sink.to("member@example.net"), what="the forward once the database is back")
    assert postfix_gate.wait_idle()
    assert InboundMessage.objects.get().status == InboundMessage.Status.FORWARDED
    assert not postfix_sink.to("ann@example.com")  # no bounce to the poster
    assert "status=bounced" not in postfix_gate.log(full=True)


def test_mail_over_the_gates_limit_is_kept_in_part_and_bounced_with_our_line(postfix_gate, postfix_sink):
    EmailListFactory(regex="physics", users=[UserFactory(email="member@example.net")])
    big = mail_fixture("plain.eml") + b"x" * 76 + (b"\r\n" + b"y" * 76) * (GATE_MAX_BYTES // 70)
    send_to_list(postfix_gate, big)

    wait_for(lambda: postfix_sink.to("ann@example.com"), what="Postfix's bounce to the poster")
    assert postfix_gate.wait_log(r"relay=mailgate, .*status=bounced"), postfix_gate.log()
    (dsn,) = postfix_sink.to("ann@example.com")
    assert dsn.mail_from in ("", "<>")  # from the null sender
    assert b"mailgate: " in dsn.data and b"too large" in dsn.data.lower(), dsn.data[:3000]
    inbound = InboundMessage.objects.get()
    assert inbound.status == InboundMessage.Status.TOO_BIG
    assert 0 < len(inbound.raw) <= GATE_MAX_BYTES + 10_000
    assert not postfix_sink.to("member@example.net")


def test_mail_over_postfix_limit_is_refused_at_smtp_time(postfix_gate, postfix_sink):
    EmailListFactory(regex="physics", users=[UserFactory(email="member@example.net")])
    huge = mail_fixture("plain.eml") + (b"z" * 76 + b"\r\n") * (MESSAGE_SIZE_LIMIT // 70)
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as refused:
        send_to_list(postfix_gate, huge)
    assert refused.value.smtp_code == 552
    assert not InboundMessage.objects.exists() and not postfix_gate.queue()


def test_broken_mime_is_routed_and_forwarded_as_it_is(postfix_gate, postfix_sink):
    EmailListFactory(regex="physics", users=[UserFactory(email="member@example.net")])
    raw = mail_fixture("broken_mime.eml")
    send_to_list(postfix_gate, raw)

    wait_for(lambda: postfix_sink.to("member@example.net"), what="the forward of the broken message")
    inbound = InboundMessage.objects.get()
    assert inbound.status == InboundMessage.Status.FORWARDED, inbound.note
    (forward,) = postfix_sink.to("member@example.net")
    body = split(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))[1]
    assert body.strip() in forward.data  # the body passed on as it came


# --- docs/mta.md's configuration, as Postfix reads it -------------------------------------------


def test_the_documented_settings_are_the_values_postfix_reads(postfix):
    # A note after a value on the same line would become part of the value (recipient_delimiter would
    # take every character of it as a delimiter); postconf warns of anything it does not know.
    assert postfix.postconf("recipient_delimiter") == "+"
    assert postfix.postconf("mailgate_destination_recipient_limit") == "1"
    assert postfix.postconf("relay_domains").endswith(LIST_DOMAIN)
    done = postfix._run("/usr/sbin/postconf", "-c", str(postfix.config), "-n")
    assert "warning" not in done.stderr, done.stderr
    assert int(postfix.postconf("message_size_limit")) > GATE_MAX_BYTES  # docs: at least MAILGATE_MAX_BYTES


def test_one_message_to_two_lists_is_one_gate_run_for_each(postfix_gate, postfix_sink):
    # mailgate_destination_recipient_limit = 1: each run of the gate gets one envelope recipient.
    EmailListFactory(regex="physics", users=[UserFactory(email="p@example.net")])
    EmailListFactory(regex="chemistry", users=[UserFactory(email="c@example.net")])
    with smtplib.SMTP(postfix_gate.host, postfix_gate.port, timeout=10) as client:
        client.sendmail(
            "ann@example.com", [f"physics@{LIST_DOMAIN}", f"chemistry@{LIST_DOMAIN}"], mail_fixture("plain.eml")
        )

    wait_for(lambda: postfix_sink.to("p@example.net") and postfix_sink.to("c@example.net"), what="both forwards")
    recipients = sorted(InboundMessage.objects.values_list("envelope_recipient", flat=True))
    assert recipients == [f"chemistry@{LIST_DOMAIN}", f"physics@{LIST_DOMAIN}"]


def test_mail_for_no_list_is_bounced_by_postfix_with_our_line(postfix_gate, postfix_sink):
    send_to_list(postfix_gate, mail_fixture("plain.eml"), recipient=f"nobody-here@{LIST_DOMAIN}")
    wait_for(lambda: postfix_sink.to("ann@example.com"), what="Postfix's bounce to the poster")
    (dsn,) = postfix_sink.to("ann@example.com")
    assert b"mailgate: " in dsn.data and b"5.1.1" in dsn.data, dsn.data[:3000]
    assert InboundMessage.objects.get().status == InboundMessage.Status.NO_LIST


def test_postfix_log_lines_track_delivery_and_bounce(postfix, postfix_sink, settings):
    # dbmail_track --follow-log on Postfix 3.7's own lines, not on lines written for the test.
    from dbmail.track.logfollow import Follower

    settings.TRACKING_QUEUE_URL = ""
    postfix_sink.script("gone@example.net", "550 5.1.1 <gone@example.net>: no such user")
    UserFactory(email="gone@example.net")
    UserFactory(email="here@example.net")
    MessageRequestFactory()

    cron(postfix)
    assert postfix.wait_log(r"to=<gone@example\.net>.* status=bounced"), postfix.log()
    assert postfix.wait_log(r"to=<here@example\.net>.* status=sent"), postfix.log()
    follower = Follower(str(postfix.root / "maillog"), "postfix")
    for _ in range(5):  # a megabyte of the session's log a poll
        follower.poll()
    consume()
    gone = TextOfEmail.objects.get(to_address="gone@example.net")
    here = TextOfEmail.objects.get(to_address="here@example.net")
    assert here.status == Status.DELIVERED, here.events.all()
    assert gone.status == Status.BOUNCED
    # Postfix's DSN may reach the gate too (VERP), with the same verdict: either way 550 5.1.1.
    tracking = list(gone.events.exclude(kind=DeliveryEvent.Kind.ATTEMPT))
    assert tracking and all(e.smtp_code == 550 and "5.1.1" in e.text for e in tracking), tracking
