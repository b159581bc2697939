"""POST /api/v1/send/ (dbmail.intake.api.transactional): one email, sent at once, once per Idempotency-Key.

A real SMTP server on loopback receives what is sent; the concurrent double
POST runs in two threads with their own PostgreSQL connections.
"""

import base64
import threading
import time
from email import message_from_bytes, policy

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from dbmail import states
from dbmail.intake import outbox
from dbmail.models import ApiSend, SenderAccount, TextOfEmail

from .factories import SenderAccountFactory
from .sendingapi import client_for, composer

E = states.EmailStatus
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ann(db):
    return composer("ann")


@pytest.fixture
def api(ann):
    return client_for(ann)


def post(api, payload, key=None, fmt="json"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return api.post("/api/v1/send/", payload, format=fmt, **headers)


def parsed(received):
    return message_from_bytes(received.data, policy=policy.default)


def test_one_email_sent_at_once_from_the_site_address(api, ann, smtp_server, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api, {"to": "Cy <cy@example.net>", "subject": "Your code", "text": "1234"})

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == E.SENT and len(body["emails"]) == 1
    email = TextOfEmail.objects.get()
    assert (email.user, email.account, email.to_name) == (ann, None, "Cy")
    (got,) = smtp_server.received
    assert got.rcpt_tos == ["cy@example.net"]
    message = parsed(got)
    assert message["Subject"] == "Your code" and message["From"] == "mailsite <noreply@example.org>"
    assert message["Message-ID"] == body["emails"][0]["message_id"]
    assert post(api, {"to": "dee@example.net", "subject": "s", "text": "t"}).status_code == 201  # no key: a new one
    assert api.get(f"/api/v1/send/{body['id']}/").json()["status"] == E.SENT


def test_from_a_sender_account_only_one_the_user_may_use(api, smtp_server, django_capture_on_commit_callbacks):
    office = SenderAccountFactory(address="office@example.org", display_name="The Office")
    SenderAccount.objects.create(address="ann.box@example.org", mailbox=True)
    SenderAccountFactory(address="old@example.org", active=False)
    with django_capture_on_commit_callbacks(execute=True):
        by_id = post(api, {"to": "cy@example.net", "subject": "s", "text": "t", "from": office.pk})
        by_address = post(api, {"to": "cy@example.net", "subject": "s", "text": "t", "from": "office@example.org"})
    assert by_id.status_code == by_address.status_code == 201
    assert {parsed(m)["From"] for m in smtp_server.received} == {"The Office <office@example.org>"}
    for sender in ("ann.box@example.org", "old@example.org", "server@example.org", "ceo@example.org", [1]):
        response = post(api, {"to": "cy@example.net", "subject": "s", "text": "t", "from": sender})
        assert response.status_code == 400 and "from" in response.json(), sender
    assert TextOfEmail.objects.count() == 2


def test_cc_copies_each_to_its_own_envelope_with_the_headers_as_written(
    api, smtp_server, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(
            api,
            {"to": "Cy <cy@example.net>", "cc": ["dee@example.net", "Eve <eve@example.net>", "cy@example.net"],
             "subject": "Minutes", "text": "Attached.", "html": "<p>Attached.</p>"},
        )  # fmt: skip
    assert response.status_code == 201, response.json()
    assert [e["to"] for e in response.json()["emails"]] == ["cy@example.net", "dee@example.net", "eve@example.net"]
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == [
        "cy@example.net",
        "dee@example.net",
        "eve@example.net",
    ]
    ids = set()
    for got in smtp_server.received:
        assert len(got.rcpt_tos) == 1  # never the others: one envelope recipient per email
        message = parsed(got)
        assert message["To"] == "Cy <cy@example.net>"
        assert message["Cc"] == "dee@example.net, Eve <eve@example.net>, cy@example.net"
        assert "Bcc" not in message
        ids.add(message["Message-ID"])
    assert len(ids) == 3


def test_attachments_multipart_or_base64_arrive_byte_for_byte(api, smtp_server, django_capture_on_commit_callbacks):
    pdf = b"%PDF-1.4\n" + bytes(range(256))
    with django_capture_on_commit_callbacks(execute=True):
        multipart = post(
            api,
            {"to": "cy@example.net", "subject": "Invoice", "text": "Attached.",
             "files": [SimpleUploadedFile("invoice.pdf", pdf, "application/pdf")]},
            fmt="multipart",
        )  # fmt: skip
        encoded = post(
            api,
            {"to": "dee@example.net", "subject": "Invoice", "text": "Attached.",
             "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf",
                              "content": base64.b64encode(pdf).decode()}]},
        )  # fmt: skip
    assert multipart.status_code == encoded.status_code == 201
    for got in smtp_server.received:
        (part,) = list(parsed(got).iter_attachments())
        assert part.get_filename() == "invoice.pdf" and part.get_content() == pdf


def test_attachments_over_the_limit_are_refused(api, settings):
    settings.DBMAIL_MAX_ATTACHMENT_BYTES = 10
    response = post(
        api,
        {"to": "cy@example.net", "subject": "s", "text": "t", "files": [SimpleUploadedFile("a.bin", b"x" * 11)]},
        fmt="multipart",
    )
    assert response.status_code == 400 and "DBMAIL_MAX_ATTACHMENT_BYTES" in response.json()["files"][0]
    assert TextOfEmail.objects.count() == 0


def test_whitelisted_headers_pass_others_and_line_breaks_are_refused(
    api, smtp_server, django_capture_on_commit_callbacks
):
    headers = {"In-Reply-To": "<a@example.net>", "x-campaign": "spring", "Auto-Submitted": "auto-generated"}
    with django_capture_on_commit_callbacks(execute=True):
        ok = post(api, {"to": "cy@example.net", "subject": "s", "text": "t", "headers": headers})
    assert ok.status_code == 201
    message = parsed(smtp_server.received[0])
    assert message["In-Reply-To"] == "<a@example.net>" and message["x-campaign"] == "spring"
    for bad in (
        {"Bcc": "spy@example.com"},
        {"From": "ceo@example.org"},
        {"X-Mailsite-Email": "1.forged"},
        {"X-Campaign": "spring\r\nBcc: spy@example.com"},
        {"In-Reply-To": "<a@b>\nBcc: spy@example.com"},
        {"Bad Name": "x"},
        {"X-Nested": {"a": 1}},
    ):
        response = post(api, {"to": "cy@example.net", "subject": "s", "text": "t", "headers": bad})
        assert response.status_code == 400 and "headers" in response.json(), bad
    assert len(smtp_server.received) == 1


def test_the_same_key_twice_makes_one_email_and_answers_with_it(api, smtp_server, django_capture_on_commit_callbacks):
    payload = {"to": "cy@example.net", "subject": "Receipt #7", "text": "Thanks."}
    with django_capture_on_commit_callbacks(execute=True):
        first = post(api, payload, key="order-7")
        second = post(api, payload, key="order-7")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"] and second.json()["status"] == E.SENT
    assert second.json()["emails"] == first.json()["emails"]
    assert TextOfEmail.objects.count() == 1 and len(smtp_server.received) == 1

    other_payload = post(api, {**payload, "text": "Thanks!"}, key="order-7")
    assert other_payload.status_code == 422 and other_payload.json()["id"] == first.json()["id"]
    # Keys are per user: another user's "order-7" is theirs.
    bobs = client_for(composer("bob"))
    with django_capture_on_commit_callbacks(execute=True):
        theirs = post(bobs, payload, key="order-7")
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert TextOfEmail.objects.count() == 2
    assert bobs.get(f"/api/v1/send/{first.json()['id']}/").status_code == 404
    assert [s["id"] for s in bobs.get("/api/v1/send/").json()["results"]] == [theirs.json()["id"]]


def test_a_bad_key_is_400_and_a_bad_payload_spends_no_key(api, smtp_server, django_capture_on_commit_callbacks):
    assert post(api, {"to": "cy@example.net", "subject": "s", "text": "t"}, key="has space").status_code == 400
    assert post(api, {"to": "cy@example.net", "subject": "s", "text": "t"}, key="k" * 256).status_code == 400
    assert post(api, {"to": "not an address", "subject": "s", "text": "t"}, key="k1").status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        assert post(api, {"to": "cy@example.net", "subject": "s", "text": "t"}, key="k1").status_code == 201


def test_server_down_leaves_it_queued_for_cron(api, settings, django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1
    with django_capture_on_commit_callbacks(execute=True):
        response = post(api, {"to": "cy@example.net", "subject": "s", "text": "t"}, key="k")
    assert response.status_code == 201 and response.json()["status"] == E.QUEUED


# --- Two requests with one key at the same moment ------------------------------------------------


def _waiting_for_a_lock():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees its first snapshot forever
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_concurrent_double_post_makes_one_email(smtp_server, monkeypatch):
    """The first request holds its key uncommitted until the second is seen waiting for it in PostgreSQL."""
    ann = composer("ann")
    payload = {"to": "cy@example.net", "subject": "Receipt #8", "text": "Thanks."}
    real_enqueue = outbox.enqueue
    second_waited = []

    def enqueue_once_the_other_waits(*args, **kwargs):
        # Runs inside the first request's transaction, after its key row is inserted.
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock() and time.monotonic() < deadline:
            time.sleep(0.02)
        second_waited.append(time.monotonic() < deadline)
        return real_enqueue(*args, **kwargs)

    monkeypatch.setattr(outbox, "enqueue", enqueue_once_the_other_waits)
    responses = {}

    def request(name):
        try:
            responses[name] = post(client_for(ann), payload, key="order-8")
        finally:
            connection.close()

    first = threading.Thread(target=request, args=("first",))
    first.start()
    deadline = time.monotonic() + 10
    while not ApiSend.objects.exists() and time.monotonic() < deadline:  # not visible: uncommitted
        if first.is_alive() and _first_holds_its_key():
            break
        time.sleep(0.01)
    second = threading.Thread(target=request, args=("second",))
    second.start()
    first.join(20)
    second.join(20)

    assert second_waited == [True], "the second request never waited for the first one's key"
    assert sorted(r.status_code for r in responses.values()) == [200, 201]
    assert responses["first"].json()["id"] == responses["second"].json()["id"]
    assert ApiSend.objects.count() == 1 and TextOfEmail.objects.count() == 1
    assert len(smtp_server.received) == 1


def _first_holds_its_key():
    """True once another connection has inserted (not yet committed) a row into the key table."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'dbmail_apisend' AND l.mode = 'RowExclusiveLock' AND l.pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0] > 0


def test_a_send_is_in_the_audit_trail_once(api, ann, smtp_server):
    from dbmail.models import AuditEvent

    payload = {"to": "cy@example.net", "cc": ["dee@example.net"], "subject": "s", "text": "t"}
    post(api, payload, key="k-audit")
    post(api, payload, key="k-audit")  # the repeat makes nothing, records nothing
    (event,) = AuditEvent.objects.all()
    assert (event.action, event.actor, event.detail) == (
        "send email (API)",
        ann,
        "to cy@example.net and 1 cc, key k-audit",
    )


def test_copies_with_cc_and_attachments_are_dkim_signed_once_when_sent(api, smtp_server):
    import dkim as dkimpy

    from dbmail.ops import dkimkeys

    from .dnsstub import StubDNS

    dns = StubDNS()
    dns.publish(dkimkeys.generate("example.org"))
    SenderAccountFactory(address="office@example.org")
    payload = {
        "to": "cy@example.net", "cc": ["dee@example.net"], "subject": "Signed", "text": "See the file.",
        "from": "office@example.org",
        "attachments": [{"filename": "a.txt", "content_type": "text/plain", "content": base64.b64encode(b"hi").decode()}],
    }  # fmt: skip
    assert post(api, payload).status_code == 201
    assert len(smtp_server.received) == 2
    for got in smtp_server.received:
        assert len(message_from_bytes(got.data).get_all("DKIM-Signature") or []) == 1  # stored unsigned, signed once
        assert dkimpy.verify(got.data, dnsfunc=dns.dkim_lookup)


def test_a_hard_bounced_address_gets_nothing_and_the_answer_says_why(api, smtp_server):
    from dbmail.models import Suppression

    Suppression.objects.create(address="gone@example.net", reason=Suppression.Reason.BOUNCED)
    response = post(api, {"to": "gone@example.net", "subject": "s", "text": "t"})
    assert response.status_code == 201 and response.json()["status"] == E.DROPPED
    assert "suppressed" in response.json()["emails"][0]["last_error"] and smtp_server.received == []
