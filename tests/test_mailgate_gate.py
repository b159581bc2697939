import email
import io
import subprocess
import sys
import uuid
from email import policy

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dbmail.content import rendering
from dbmail.models import TextOfEmail
from mailgate.gate import receive as gate
from mailgate.models import EmailList, InboundMessage

from .conftest import ROOT, subprocess_env
from .factories import EmailListFactory, UserFactory, mail_fixture

LIST = "physics@lists.example.org"
FIXTURES = [
    "plain.eml", "alternative.eml", "attachments.eml", "inline_image.eml", "latin1.eml", "encoded_headers.eml",
    "broken_mime.eml", "missing_headers.eml", "huge_headers.eml", "cc_bcc.eml", "auto_reply.eml",
    "not_a_message.bin", "dsn_rfc3464_hard.eml", "dsn_exim.eml", "dsn_qmail.eml",
]  # fmt: skip


def run_gate(raw, *args, env=None, script=False):
    """The gate as the MTA runs it: a child process, the message on stdin.

    These tests are about the pipe, not about who may post (tests/test_mailgate_policy.py and
    test_mailgate_proof.py are): a member's claimed address is trusted unless a test says otherwise.
    """
    command = [str(ROOT / "mailgate" / "pipe.py")] if script else [str(ROOT / "manage.py"), "mailgate"]
    env = dict(env or subprocess_env())
    env.setdefault("MAILGATE_UNVERIFIED_POSTS", "trust")
    return subprocess.run([sys.executable, *command, *args], input=raw, env=env, capture_output=True, timeout=120)


@pytest.fixture
def physics(db, settings):
    settings.MAILGATE_UNVERIFIED_POSTS = "trust"  # as run_gate: in-process tests here are about the gate, not proofs
    ann = UserFactory(username="ann", email="ann@example.com", first_name="Ann", last_name="Smith")
    bob = UserFactory(username="bob", email="bob@example.net", first_name="Bob", last_name="Jones")
    return EmailListFactory(
        name="Physics",
        regex="physics",
        users=[ann, bob],
        subject_prefix="[Physics]",
        posting_policy=EmailList.Policy.MEMBERS,
    )


# --- As a child process ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_forwarded_mail_is_stored_queued_and_sent(physics, smtp_server):
    # Proven as in production, without DNS: our MTA's Authentication-Results, on top.
    raw = b"Authentication-Results: mx.lists.example.org; dmarc=pass header.from=example.com\n" + mail_fixture(
        "plain.eml"
    )
    env = subprocess_env(
        smtp=smtp_server, MAILGATE_UNVERIFIED_POSTS="hold", MAILGATE_TRUSTED_AUTHSERV_IDS="MX.lists.example.org"
    )
    proc = run_gate(raw, "--recipient", LIST, "--sender", "ann@example.com", env=env)
    assert proc.returncode == 0, proc.stderr
    assert b"forwarded to 2 member(s)" in proc.stdout
    inbound = InboundMessage.objects.get()
    assert bytes(inbound.raw) == raw
    assert (inbound.status, inbound.email_list, inbound.forwarded_count) == ("forwarded", physics, 2)
    assert inbound.note == (
        "posted by a member (Authentication-Results of mx.lists.example.org: dmarc=pass header.from=example.com)"
    )
    emails = TextOfEmail.objects.order_by("to_address")
    assert [(e.to_address, e.status) for e in emails] == [("ann@example.com", "sent"), ("bob@example.net", "sent")]
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == ["ann@example.com", "bob@example.net"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_cc_and_bcc_addresses_never_receive_anything(physics, smtp_server):
    proc = run_gate(
        mail_fixture("cc_bcc.eml"),
        "--recipient",
        LIST,
        "--sender",
        "ann@example.com",
        env=subprocess_env(smtp=smtp_server),
    )
    assert proc.returncode == 0, proc.stderr
    delivered = sorted(r for m in smtp_server.received for r in m.rcpt_tos)
    assert delivered == ["ann@example.com", "bob@example.net"]
    assert not TextOfEmail.objects.filter(to_address__in=["outsider@example.net", "hidden@example.net"]).exists()
    for received in smtp_server.received:
        assert received.message["Bcc"] is None
        assert b"hidden@example.net" not in received.data


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_no_such_list_is_67_and_kept(physics):
    proc = run_gate(mail_fixture("plain.eml"), "--recipient", "nobody@lists.example.org", "--sender", "ann@example.com")
    assert proc.returncode == 67
    assert b"no such list: nobody@lists.example.org" in proc.stderr
    assert InboundMessage.objects.get().status == "no_list"
    assert not TextOfEmail.objects.exists()


def test_a_personal_address_of_nobody_is_67_like_no_list(physics):
    EmailListFactory(name="People", regex=r"u-(?P<user>[a-z0-9]+)", resolver="user", posting_policy="anyone")
    result = gate.run(mail_fixture("plain.eml"), "u-nobody@lists.example.org", "ann@example.com")
    assert (result.code, result.message) == (67, "no such list: u-nobody@lists.example.org")
    assert InboundMessage.objects.get().status == "no_list" and not TextOfEmail.objects.exists()
    assert gate.run(mail_fixture("plain.eml"), "u-ann@lists.example.org", "ann@example.com").code == 0
    assert TextOfEmail.objects.get().to_address == "ann@example.com"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_too_big_is_65_with_a_clear_message(physics):
    raw = mail_fixture("attachments.eml")
    proc = run_gate(raw, "--recipient", LIST, env=subprocess_env(MAILGATE_MAX_BYTES=4096))
    assert proc.returncode == 65
    assert b"message too large: over the limit of 4096 bytes" in proc.stderr
    inbound = InboundMessage.objects.get()
    assert (inbound.status, inbound.size) == ("too_big", len(raw))
    assert not TextOfEmail.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_database_down_is_75_without_a_traceback():
    env = subprocess_env(DATABASE_URL="postgres://postgres@127.0.0.1:1/mailsite_nowhere")
    for script in (False, True):
        proc = run_gate(mail_fixture("plain.eml"), "--recipient", LIST, env=env, script=script)
        assert proc.returncode == 75, proc.stderr
        assert b"Traceback" not in proc.stderr
        assert b"temporary failure (database)" in proc.stderr


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_loops_are_stopped(physics, smtp_server):
    env = subprocess_env(smtp=smtp_server)
    first = run_gate(mail_fixture("plain.eml"), "--recipient", LIST, "--sender", "ann@example.com", env=env)
    assert first.returncode == 0
    copy = smtp_server.received[0].data  # what a member got, fed back to the list (e.g. by a forwarding rule)
    proc = run_gate(copy, "--recipient", LIST, "--sender", "ann@example.com", env=env)
    assert proc.returncode == 0
    looped = InboundMessage.objects.order_by("-id").first()
    assert looped.status == "loop" and "X-Mailsite-Email header" in looped.note  # the first of our marks
    auto = run_gate(mail_fixture("auto_reply.eml"), "--recipient", LIST, "--sender", "ann@example.com", env=env)
    assert auto.returncode == 0
    assert InboundMessage.objects.order_by("-id").first().status == "loop"
    assert len(smtp_server.received) == 2  # only the first message's two copies


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_envelope_from_exim_environment_and_smtp_down_leaves_mail_queued(physics):
    env = subprocess_env(
        LOCAL_PART="physics", DOMAIN="lists.example.org", SENDER="bob@example.net", EMAIL_URL="smtp://127.0.0.1:1"
    )
    proc = run_gate(mail_fixture("attachments.eml"), env=env, script=True)
    assert proc.returncode == 0, proc.stderr
    inbound = InboundMessage.objects.get()
    assert (inbound.envelope_recipient, inbound.envelope_sender) == (LIST, "bob@example.net")
    assert sorted(TextOfEmail.objects.values_list("status", flat=True)) == ["queued", "queued"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_missing_recipient_is_75_and_stores_nothing():
    env = subprocess_env()
    env.pop("RECIPIENT", None)
    proc = run_gate(mail_fixture("plain.eml"), env=env)
    assert proc.returncode == 75
    assert b"no envelope recipient" in proc.stderr
    assert not InboundMessage.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ["broken_mime.eml", "not_a_message.bin", "huge_headers.eml", "dsn_exim.eml"])
def test_odd_messages_in_a_child_process(physics, name):
    raw = mail_fixture(name)
    env = subprocess_env(EMAIL_URL="smtp://127.0.0.1:1")
    proc = run_gate(raw, "--recipient", LIST, "--sender", "ann@example.com", env=env)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert bytes(InboundMessage.objects.get().raw) == raw


# --- In process --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_is_stored_byte_for_byte_with_a_documented_code(physics, name, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    raw = mail_fixture(name)
    result = gate.run(raw, LIST, "ann@example.com")
    assert result.code == 0
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert bytes(inbound.raw) == raw
    # Reports with Auto-Submitted are stopped; qmail's has no such header and a member sent it, so it goes out.
    stopped = {"auto_reply.eml": "loop", "dsn_rfc3464_hard.eml": "loop", "dsn_exim.eml": "loop"}
    expected = {**stopped, "not_a_message.bin": "raw"}.get(name, "forwarded")
    assert inbound.status == expected, inbound.note


@pytest.mark.django_db
def test_encoded_and_missing_headers_are_recorded(physics, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    physics.posting_policy = EmailList.Policy.ANYONE
    physics.save()
    result = gate.run(mail_fixture("encoded_headers.eml"), LIST, "x@example.com")
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert inbound.subject == "Zajęcia w czwartek — sala 12"
    assert inbound.from_header == "Ángela Gómez <angela@example.com>"
    result = gate.run(mail_fixture("missing_headers.eml"), LIST, "x@example.com")
    bare = InboundMessage.objects.get(pk=result.inbound_id)
    assert (bare.status, bare.subject, bare.message_id, bare.from_header) == ("forwarded", "", "", "")


@pytest.mark.django_db
def test_a_bug_after_storing_keeps_the_mail_and_answers_0(physics, monkeypatch):
    def broken(*args):
        raise RuntimeError("resolver exploded")

    monkeypatch.setattr(gate.routing, "route", broken)
    result = gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com")
    assert result.code == 0
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert inbound.status == "failed" and "resolver exploded" in inbound.note
    monkeypatch.undo()
    assert gate.reprocess(inbound).message.startswith("forwarded")


@pytest.mark.django_db
def test_a_database_error_while_processing_is_75_and_the_copy_is_kept(physics, monkeypatch):
    from django.db import OperationalError

    def lost(*args):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(gate.forward, "forward", lost)
    result = gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com")
    assert result.code == 75 and "server closed the connection" in result.message
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert inbound.status == "failed" and bytes(inbound.raw) == mail_fixture("plain.eml")
    assert not TextOfEmail.objects.exists()


@pytest.mark.django_db
def test_unknown_recipient_in_notice_mode_answers_0_and_notifies_once(physics, settings):
    settings.MAILGATE_UNKNOWN_RECIPIENT = "notice"
    first = gate.run(mail_fixture("plain.eml"), "nobody@lists.example.org", "stranger@example.net")
    second = gate.run(mail_fixture("plain.eml"), "nobody@lists.example.org", "stranger@example.net")
    assert (first.code, second.code) == (0, 0)
    assert TextOfEmail.objects.filter(to_address="stranger@example.net").count() == 1
    assert "(no notice sent)" in InboundMessage.objects.get(pk=second.inbound_id).note


@pytest.mark.django_db
def test_main_reads_the_envelope_and_writes_the_outcome(physics):
    out, err = io.StringIO(), io.StringIO()
    code = gate.main(io.BytesIO(mail_fixture("plain.eml")), out, err, {"RECIPIENT": "Nobody@Lists.Example.org"})
    assert code == 67
    assert err.getvalue() == "mailgate: no such list: Nobody@lists.example.org\n"


@pytest.fixture
def open_list(physics, settings, monkeypatch):
    """Set up once per test, not per example (each settings change would nest another override)."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # Hypothesis reseeds the `random` module for every example, and make_msgid draws from it:
    # ids made within the same 1/100 s would repeat. Ids from the OS's randomness do not.
    monkeypatch.setattr(rendering, "new_message_id", lambda *args: f"<{uuid.uuid4().hex}@example.org>")
    physics.posting_policy = EmailList.Policy.ANYONE
    physics.save()
    return physics


def _mutations():
    """Real messages with bytes flipped, cut, duplicated or spliced in."""
    fixtures = st.sampled_from([n for n in FIXTURES if n != "huge_headers.eml"]).map(mail_fixture)

    def mutate(raw, edits):
        data = bytearray(raw)
        for kind, position, value in edits:
            at = position % (len(data) + 1)
            if kind == 0:
                data[at : at + 1] = bytes([value % 256])
            elif kind == 1:
                del data[at : at + value % 50]
            elif kind == 2:
                data[at:at] = bytes([value % 256]) * (value % 20)
            else:
                data[at:at] = b'\r\n--boundary\r\nContent-Type: multipart/mixed; boundary="\r\n'
        return bytes(data)

    edit = st.tuples(st.integers(0, 3), st.integers(0, 20000), st.integers(0, 1000))
    return st.builds(mutate, fixtures, st.lists(edit, max_size=8))


@pytest.mark.django_db
@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.one_of(st.binary(max_size=3000), _mutations()),
    recipient=st.sampled_from([LIST, "nobody@lists.example.org"]),
    sender=st.sampled_from(["", "ann@example.com", "<>", "x@example.com"]),
)
def test_property_any_bytes_give_a_documented_code_and_are_stored(open_list, raw, recipient, sender):
    result = gate.run(raw, recipient, sender)
    assert result.code in gate.EXIT_CODES
    assert result.inbound_id is not None
    assert result.code != 75, result.message  # the database is up: nothing is temporary here
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert bytes(inbound.raw) == raw
    assert inbound.status != "failed", inbound.note
    if result.code == 0 and inbound.status == "forwarded":
        for email in TextOfEmail.objects.filter(raw_message__isnull=False).order_by("-id")[:2]:
            forwarded = email_policy_parse(bytes(email.raw_message))
            assert forwarded["X-Loop"] == LIST


def email_policy_parse(data):
    return email.message_from_bytes(data, policy=policy.default)


@pytest.mark.django_db
def test_nul_characters_in_headers_are_stored_without_them(physics, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    raw = mail_fixture("plain.eml").replace(b"Subject: Lab", b"Subject: L\x00ab")
    raw = raw.replace(b"<plain-1@", b"<pl\x00ain-1@")
    result = gate.run(raw, LIST, "ann@example.com")
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert (result.code, inbound.status, inbound.subject) == (0, "forwarded", "Lab on Thursday")
    assert bytes(inbound.raw) == raw
