"""Every kind of outbound email leaves DKIM-signed with its From domain's key, over exactly the bytes sent.

Each end-to-end test sends through the real send path to the scripted SMTP
server on loopback and verifies what the server received with dkimpy's own
verifier, against a stub DNS that publishes the key's record as dbmail_dkim
prints it.
"""

import email
import hashlib
import io
import logging
import signal
import subprocess
import sys
import time

import dkim as dkimpy
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone

from dbmail.content import attachments
from dbmail.intake import expand, outbox
from dbmail.models import DkimKey, SendGrant, TextOfEmail, UnsignedMail
from dbmail.ops import dkimkeys
from dbmail.ops.dnscheck import tags
from dbmail.send import dkim, mime
from dbmail.send.loop import send_due
from mailgate.gate import receive as gate
from mailgate.mailboxes import outgoing
from mailgate.models import Message

from .conftest import ROOT, subprocess_env
from .dnsstub import StubDNS
from .factories import (
    EmailListFactory,
    MailAccountFactory,
    MailServerProfileFactory,
    MessageRequestFactory,
    SenderAccountFactory,
    TextOfEmailFactory,
    UserFactory,
    mail_fixture,
)
from .spoolfiles import drop, item, xml

# Transactional: the send loop commits its outcomes from a writer thread with its own connection.
pytestmark = pytest.mark.django_db(transaction=True)

HEADERS_OF_BULK_MAIL = {
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    "list-unsubscribe", "list-unsubscribe-post", "feedback-id",
}  # fmt: skip


@pytest.fixture
def dns():
    return StubDNS()


def published_key(dns, domain, **kwargs):
    key = dkimkeys.generate(domain, **kwargs)
    dns.publish(key)
    return key


def signature_of(data):
    """The tags of the message's DKIM-Signature (there must be exactly one)."""
    fields = email.message_from_bytes(data).get_all("DKIM-Signature") or []
    assert len(fields) == 1, fields
    return tags(fields[0])


def signed_headers(data):
    return signature_of(data)["h"].lower().split(":")


def verifies(data, dns):
    return dkimpy.verify(data, dnsfunc=dns.dkim_lookup)


def assert_signed(received, dns, key):
    sig = signature_of(received.data)
    assert (sig["d"], sig["s"], sig["a"], sig["c"]) == (key.domain, key.selector, key.algorithm, "relaxed/relaxed")
    assert verifies(received.data, dns), received.data[:600]
    headers = signed_headers(received.data)
    assert headers.count("from") == 2  # oversigned: a From added on the way breaks the signature
    return headers


def tampered(data):
    head, _, body = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n" + body.replace(b"e", b"E", 1)


# --- each kind of outbound email -------------------------------------------------------------


def test_request_mail_is_signed_over_the_bytes_the_server_received(smtp_server, dns):
    key = published_key(dns, "example.org")
    UserFactory.create_batch(2)
    MessageRequestFactory()  # from office@example.org to every active user
    expand.expand_due()
    assert send_due().sent == 2

    assert len(smtp_server.received) == 2
    for received in smtp_server.received:
        assert HEADERS_OF_BULK_MAIL <= set(assert_signed(received, dns, key))
        assert not verifies(tampered(received.data), dns)  # the check can fail: one changed byte does
    assert not UnsignedMail.objects.exists()


def test_ad_hoc_mail_is_signed(smtp_server, dns):
    key = published_key(dns, "example.org")
    SenderAccountFactory()
    outbox.send_now(
        to="ann@example.net", subject="Your password", text="Use this link.", from_email="office@example.org"
    )
    (received,) = smtp_server.received
    assert_signed(received, dns, key)


def test_request_mail_with_attachments_built_by_django_is_signed_too(smtp_server, dns, settings, tmp_path):
    # Attachments are beyond the lean writer: Django's EmailMessage builds these bytes.
    settings.MEDIA_ROOT = str(tmp_path)
    key = published_key(dns, "example.org")
    UserFactory()
    request = MessageRequestFactory()
    attachments.add(request, SimpleUploadedFile("plan.pdf", b"%PDF-1.4 plan", content_type="application/pdf"))
    expand.expand_due()
    assert send_due().sent == 1
    (received,) = smtp_server.received
    assert [p.get_filename() for p in received.message.iter_attachments()] == ["plan.pdf"]
    assert HEADERS_OF_BULK_MAIL <= set(assert_signed(received, dns, key))


def test_smtputf8_mail_is_signed_over_its_utf8_headers(smtp_server, dns):
    key = published_key(dns, "example.org")
    SenderAccountFactory()
    outbox.send_now(to="Jörg <jörg@exämple.org>", subject="Grüße", text="Hallo", from_email="office@example.org")
    (received,) = smtp_server.received
    assert "jörg@xn--exmple-cua.org".encode() in received.data  # the To header is UTF-8 (RFC 6532)
    assert_signed(received, dns, key)


def test_spool_mail_is_signed(smtp_server, dns, settings, tmp_path):
    key = published_key(dns, "example.com")
    settings.DBMAIL_SPOOL_DIR = str(tmp_path)
    SenderAccountFactory(address="foo@example.com", display_name="Biblioteka")
    drop(tmp_path, "reminder.xml", xml(item(address="boo@example.net")))
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        call_command("dbmail_cron", stdout=io.StringIO())
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    (received,) = smtp_server.received
    assert_signed(received, dns, key)


def test_a_list_forward_is_signed_as_the_list_and_the_posters_signature_dropped(smtp_server, dns):
    key = published_key(dns, "lists.example.org")
    ann = UserFactory(username="ann", email="ann@example.com", first_name="Ann", last_name="Smith")
    EmailListFactory(name="Physics", regex="physics", users=[ann, UserFactory(email="bob@example.net")])
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=x; b=AAAA\n" + mail_fixture("plain.eml")

    assert gate.run(raw, "physics@lists.example.org", "ann@example.com").code == 0

    assert len(smtp_server.received) == 2
    for received in smtp_server.received:
        assert received.message["From"].addresses[0].addr_spec == "physics@lists.example.org"
        headers = assert_signed(received, dns, key)  # exactly one signature: ours
        assert "list-id" in headers


def test_mailbox_mail_through_the_sites_server_is_signed(smtp_server, dns):
    key = published_key(dns, "example.org")
    owner = UserFactory(username="ann")
    SendGrant.objects.create(address="@example.org", user=owner)  # the site's server: a grant lets it send
    account = MailAccountFactory(
        profile=MailServerProfileFactory(smtp_host=""), owner=owner, address="office@example.org", display_name="Office"
    )
    message = Message.objects.create(
        direction=Message.Direction.OUTGOING,
        status=Message.Status.SENDING,
        account=account,
        subject="Quarterly report",
        text="Numbers attached.\n",
        to=["ann@example.com"],
        cc=["bob@example.net"],
    )
    assert outgoing.send(message).status == Message.Status.SENT
    assert len(smtp_server.received) == 2
    for received in smtp_server.received:
        assert "cc" in assert_signed(received, dns, key)


def test_ed25519_keys_sign_with_ed25519_sha256(smtp_server, dns):
    key = published_key(dns, "example.org", algorithm="ed25519")
    TextOfEmailFactory()
    send_due()
    (received,) = smtp_server.received
    assert_signed(received, dns, key)
    assert signature_of(received.data)["a"] == "ed25519-sha256"


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_the_new_key_signs_and_the_old_record_still_verifies_older_mail(smtp_server, dns):
    old = published_key(dns, "example.org")
    TextOfEmailFactory()
    send_due()
    new = dkimkeys.rotate("example.org")
    dns.publish(new)
    TextOfEmailFactory()
    send_due()

    first, second = smtp_server.received
    assert signature_of(first.data)["s"] == old.selector and verifies(first.data, dns)
    assert signature_of(second.data)["s"] == new.selector and verifies(second.data, dns)
    assert [k.selector for k in dkimkeys.active_keys("example.org")] == [new.selector, old.selector]

    dkimkeys.retire("example.org", old.selector)
    TextOfEmailFactory()
    send_due()
    assert signature_of(smtp_server.received[2].data)["s"] == new.selector


# --- unsigned mail -----------------------------------------------------------------------------


def test_mail_from_a_domain_without_a_key_goes_out_unsigned_and_is_counted_once_per_email(smtp_server, dns):
    published_key(dns, "example.org")
    other = SenderAccountFactory(address="news@other.example")
    retried = TextOfEmailFactory(account=other, from_header="news@other.example", envelope_sender="news@other.example")
    smtp_server.script(retried.to_address, "451 4.3.0 try later", "250")
    TextOfEmailFactory.create_batch(2, account=other, from_header="news@other.example")
    assert send_due().deferred == 1
    TextOfEmail.objects.filter(pk=retried.pk).update(next_attempt_at=timezone.now())
    assert send_due().sent == 1

    assert len(smtp_server.received) == 3
    assert all(email.message_from_bytes(r.data)["DKIM-Signature"] is None for r in smtp_server.received)
    dkim.unsigned.flush()
    counted = UnsignedMail.objects.get(domain="other.example", day=timezone.localdate())
    assert counted.count == 3  # the retry of the deferred one is the same email


def test_mail_through_an_accounts_own_server_is_not_counted_unsigned(smtp_server):
    own = SenderAccountFactory(address="box@elsewhere.example", smtp_host=smtp_server.host, smtp_port=smtp_server.port)
    TextOfEmailFactory(account=own, from_header="box@elsewhere.example")
    assert send_due().sent == 1
    dkim.unsigned.flush()
    assert not UnsignedMail.objects.exists()


def test_a_key_that_cannot_sign_sends_the_mail_unsigned_and_logs_it(smtp_server, caplog):
    DkimKey.objects.create(domain="example.org", selector="broken", private_key="not a key", public_key="AAAA")
    TextOfEmailFactory()
    with caplog.at_level(logging.ERROR, logger="dbmail.send.dkim"):
        assert send_due().sent == 1
    assert email.message_from_bytes(smtp_server.received[0].data)["DKIM-Signature"] is None
    assert "cannot sign" in caplog.text
    assert UnsignedMail.objects.get(domain="example.org").count == 1


# --- the signer itself -------------------------------------------------------------------------


@pytest.mark.django_db
def test_keys_are_read_once_per_process_until_the_reload_interval(settings, django_assert_num_queries):
    settings.DBMAIL_DKIM_RELOAD_SECONDS = 1
    key = dkimkeys.generate("example.org", algorithm="ed25519")
    row = TextOfEmailFactory.build(pk=1)
    data = mime.compose(row, sign=False)
    dkim.sign(row, data)  # loads the keys
    with django_assert_num_queries(0):
        for _ in range(5):
            assert dkim.sign(row, data).startswith(b"DKIM-Signature:")
    # A key made elsewhere (no signal in this process: bulk_create sends none) is seen after the interval.
    other = dkimkeys.new_key_material(DkimKey.Algorithm.ED25519)
    DkimKey.objects.filter(pk=key.pk).update(active=False)
    DkimKey.objects.bulk_create(
        [DkimKey(domain="example.org", selector="later", algorithm=DkimKey.Algorithm.ED25519, **vars_of(other))]
    )
    assert b"s=" + key.selector.encode() in dkim.sign(row, data)
    time.sleep(1.1)
    assert b"s=later" in dkim.sign(row, data)


def vars_of(material):
    return {"private_key": material.private_key, "public_key": material.public_key}


@pytest.mark.django_db
def test_a_key_saved_in_this_process_signs_at_once():
    row = TextOfEmailFactory.build(pk=1)
    data = mime.compose(row, sign=False)
    assert dkim.sign(row, data) == data  # no key yet (and the empty set is cached)
    dkimkeys.generate("example.org", algorithm="ed25519")
    assert dkim.sign(row, data).startswith(b"DKIM-Signature:")


def test_openssl_gives_dkimpys_own_rsa_signature():
    assert dkim._dkimpy() is dkimpy
    rsa_sign = dkimpy.RSASSA_PKCS1_v1_5_sign
    assert getattr(rsa_sign, "openssl", False)  # installed when dbmail.send.dkim first signs
    material = dkimkeys.new_key_material(DkimKey.Algorithm.RSA, 2048)
    private = dkimpy.parse_pem_private_key(material.private_key.encode())
    for text in (b"", b"one message", b"another" * 100):
        digest = hashlib.sha256(text)
        assert bytes(rsa_sign(digest, private)) == bytes(rsa_sign.pure(digest, private))


# --- The exit flush: the last counts as a process ends, whatever is already gone ---

EXIT_CHILD = """
import logging, os, sys
import django
django.setup()
from dbmail.send import dkim
dkim.log.disabled = True  # the adds' own warnings are not what is tested here
for _ in range(int(os.environ["ADDS"])):
    dkim.unsigned.add("nokey.example")
dkim.log.disabled = False
if os.environ.get("CLOSE_LOG_STREAM"):  # as pytest leaves it: its capture closed under the handler
    dead = open(os.devnull, "w")
    for handler in logging.getLogger().handlers:
        handler.setStream(dead)
    dead.close()
print("pending", sum(dkim.unsigned.pending().values()), flush=True)
"""


def exit_child(database_url=None, adds=2, **env):
    env = subprocess_env(ADDS=str(adds), **env)
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-c", EXIT_CHILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_counts_left_at_exit_are_written():
    done = exit_child(adds=3)  # the first add writes at once (a new day's row), the other two wait for exit
    assert (done.returncode, done.stdout, done.stderr) == (0, "pending 2\n", "")
    assert UnsignedMail.objects.get(domain="nokey.example").count == 3


@pytest.mark.slow
@pytest.mark.django_db
def test_a_database_gone_at_exit_costs_one_line_and_no_traceback():
    # After a test run its database is dropped before the interpreter ends.
    gone = "postgres://postgres@127.0.0.1:5432/mailsite_no_such_database"
    done = exit_child(gone)
    assert done.returncode == 0 and done.stdout == "pending 2\n"
    assert done.stderr == "dkim: 2 unsigned emails not recorded at exit: the database is unavailable\n"


@pytest.mark.slow
@pytest.mark.django_db
def test_a_closed_log_stream_at_exit_prints_nothing():
    done = exit_child("postgres://postgres@127.0.0.1:5432/mailsite_no_such_database", CLOSE_LOG_STREAM="1")
    assert (done.returncode, done.stdout, done.stderr) == (0, "pending 2\n", "")


def test_any_other_failure_at_exit_is_one_warning(monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("the app registry is gone\nsecond line")

    monkeypatch.setattr(dkim.UnsignedCounter, "flush", broken)
    dkim.unsigned._counts[("nokey.example", timezone.localdate())] = 4
    with caplog.at_level(logging.WARNING, logger="dbmail.send.dkim"):
        dkim._at_exit()
    assert [r.getMessage() for r in caplog.records] == [
        "dkim: 4 unsigned emails not recorded at exit: the app registry is gone"
    ]
    assert logging.raiseExceptions is True and not dkim.log.disabled
