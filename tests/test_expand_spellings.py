"""One email per mailbox per request, however its address is spelled and wherever it falls in the expansion.

Expansion stores each address in its delivery spelling
(dbmail.content.addresses.delivery_spelling), whose lower case is the
mailbox key, so the (request, lower(to_address)) constraint stops a second
email to ann@xn--bcher-kva.example after ann@bücher.example in another chunk,
after a crash, from a second expander, and through the API. Real PostgreSQL;
real SMTP on loopback where sending matters.
"""

import importlib
import threading

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from dbmail.content.addresses import mailbox_key
from dbmail.intake import expand
from dbmail.models import MessageRequest, Suppression, TextOfEmail
from dbmail.send import loop as sending
from dbmail.track import guard

from .factories import GroupFactory, MessageRequestFactory, SenderAccountFactory, TextOfEmailFactory, UserFactory
from .sendingapi import client_for, composer

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status

# Two mailboxes, each spelled several ways, with other mailboxes between them (chunks of one or two).
SPELLINGS = [
    "ann@bücher.example",
    "cy@example.org",
    "ann@xn--bcher-kva.example",
    '"bob"@example.org',
    "ann@BÜCHER.example",
    "bob@example.org",
    "Ann@Bücher.example",
    "dee@example.org",
]
ONE_EACH = {"ann@xn--bcher-kva.example", "cy@example.org", "bob@example.org", "dee@example.org"}


def addresses_request(rows, **fields):
    return MessageRequestFactory(recipient_set="addresses", recipient_params={"rows": rows}, **fields)


def addresses_of(request):
    return sorted(request.emails.values_list("to_address", flat=True))


def assert_one_email_per_mailbox(request, expected):
    stored = addresses_of(request)
    assert len({mailbox_key(a) for a in stored}) == len(stored), stored
    assert set(stored) == expected


def test_spellings_of_one_mailbox_in_different_chunks_get_one_email():
    request = addresses_request(SPELLINGS)
    assert not expand._can_write_aside()  # in the test's transaction: each chunk through copy_new
    assert expand.expand(expand.claim_request(), chunk_size=1) == 4
    assert_one_email_per_mailbox(request, ONE_EACH)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == 4


@pytest.mark.django_db(transaction=True)
def test_spellings_in_different_chunks_written_aside_get_one_email():
    """The writer thread's COPY, then its stage table after the duplicate (dbmail.intake.copyrows.insert_new)."""
    request = addresses_request(SPELLINGS)
    assert expand._can_write_aside()
    assert expand.expand(expand.claim_request(), chunk_size=1) == 4
    assert_one_email_per_mailbox(request, ONE_EACH)


def test_the_first_spelling_in_the_set_is_the_one_kept_with_its_own_name_and_variables():
    request = addresses_request(
        [{"email": "Ann@Bücher.example", "name": "Ann A", "n": 1}, "x@example.org", {"email": "ann@bücher.example"}],
        text_body="n={{ n }}",
    )
    expand.expand(expand.claim_request(), chunk_size=1)
    ann = request.emails.get(to_address__iexact="ann@xn--bcher-kva.example")
    assert (ann.to_address, ann.to_name) == ("Ann@xn--bcher-kva.example", "Ann A")  # the local part's case kept
    assert ann.text.startswith("n=1")


def test_a_resumed_expansion_sends_no_second_email_to_another_spelling():
    request = addresses_request(["ann@bücher.example", "cy@example.org", "dee@example.org", *SPELLINGS])
    claimed = expand.claim_request()

    def crash_after_first_chunk(n):
        raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        expand.expand(claimed, chunk_size=2, on_chunk=crash_after_first_chunk)
    assert addresses_of(request) == ["ann@xn--bcher-kva.example", "cy@example.org"]
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDING and request.checkpoint == {"after": 1}

    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=timezone.now())
    assert expand.expand_due().requests == 1
    assert_one_email_per_mailbox(request, ONE_EACH)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == 4


@pytest.mark.django_db(transaction=True)
def test_two_expanders_at_once_make_one_email_per_mailbox():
    """As after a lease taken over while its holder still ran: both hold the request and write the same set."""
    request = addresses_request(SPELLINGS)
    claimed = expand.claim_request()
    twin = MessageRequest.objects.select_related("sender").get(pk=request.pk)  # same token, its own object
    start = threading.Barrier(2)
    errors = []

    def run(held):
        try:
            start.wait(timeout=10)
            expand.expand(held, chunk_size=1)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(held,)) for held in (claimed, twin)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert_one_email_per_mailbox(request, ONE_EACH)


def test_a_request_expanded_halfway_before_the_upgrade_resumes_without_a_second_email():
    """Migration 0023 respells the emails of requests still to expand; resuming then meets the new spelling."""
    office = SenderAccountFactory()
    rows = ['"ann"@bücher.example', "cy@example.org", *SPELLINGS]
    request = addresses_request(rows, sender=office, status="expanding", checkpoint={"after": 1})
    # What the old code stored for the first two rows: the address as written, the domain lower-cased.
    TextOfEmailFactory(request=request, account=office, to_address='"ann"@bücher.example')
    TextOfEmailFactory(request=request, account=office, to_address="cy@example.org")
    done = addresses_request(["eve@bücher.example"], sender=office, status="expanded")
    TextOfEmailFactory(request=done, account=office, to_address="eve@bücher.example")
    # A second email the old code made already: it stays (the spelling is taken), the respelling goes on.
    twice = addresses_request(["fay@bücher.example"], sender=office, status="failed", checkpoint={"after": 5})
    TextOfEmailFactory(request=twice, account=office, to_address="fay@xn--bcher-kva.example")
    TextOfEmailFactory(request=twice, account=office, to_address="fay@bücher.example")
    TextOfEmailFactory(request=twice, account=office, to_address='"gus"@example.org')

    importlib.import_module("dbmail.migrations.0023_delivery_spellings").respell(apps, None)

    assert addresses_of(request) == ["ann@xn--bcher-kva.example", "cy@example.org"]
    assert addresses_of(done) == ["eve@bücher.example"]  # finished: never added to again, left as it was
    assert addresses_of(twice) == ["fay@bücher.example", "fay@xn--bcher-kva.example", "gus@example.org"]
    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=timezone.now())
    assert expand.expand_due().requests == 1
    assert_one_email_per_mailbox(request, ONE_EACH)


def test_a_suppression_of_one_spelling_stops_the_others():
    Suppression.objects.add("ann@xn--bcher-kva.example", Suppression.Reason.UNSUBSCRIBED)
    Suppression.objects.add('"Bob"@example.org', Suppression.Reason.MANUAL)
    request = addresses_request(SPELLINGS)
    expand.expand(expand.claim_request(), chunk_size=1)
    assert addresses_of(request) == ["cy@example.org", "dee@example.org"]


def test_a_suppression_made_later_in_another_spelling_still_cancels_the_stored_email():
    request = addresses_request(["ann@bücher.example", "cy@example.org"])
    expand.expand(expand.claim_request())
    assert addresses_of(request) == ["ann@xn--bcher-kva.example", "cy@example.org"]
    assert guard.pause(request, "too many bounces")
    Suppression.objects.add('"Ann"@Bücher.example.', Suppression.Reason.BOUNCED)
    assert "1 email to addresses suppressed meanwhile cancelled" in guard.resume(request)
    assert request.emails.get(to_address="ann@xn--bcher-kva.example").status == Status.CANCELLED
    assert request.emails.get(to_address="cy@example.org").status == Status.QUEUED


def test_a_request_made_through_the_api_gets_one_email_per_mailbox(settings):
    settings.DBMAIL_EXPAND_CHUNK = 1
    SenderAccountFactory(address="office@example.org")
    api = client_for(composer("ann"))
    parents = GroupFactory(name="Parents")
    UserFactory(username="zoe1", email="zoe@bücher.example", groups=[parents])
    UserFactory(username="other", email="other@example.org", groups=[parents])
    UserFactory(username="zoe2", email="Zoe@XN--BCHER-KVA.example", groups=[parents])  # her second account
    made = api.post(
        "/api/v1/requests/",
        {
            "sender": "office@example.org",
            "subject": "Hi",
            "text_body": "Hello.",
            "recipient_set": "groups",
            "recipient_params": {"groups": ["Parents"]},
        },
        format="json",
    )
    assert made.status_code == 201, made.json()
    assert expand.expand_due().requests == 1
    request = MessageRequest.objects.get(pk=made.json()["id"])
    assert_one_email_per_mailbox(request, {"zoe@xn--bcher-kva.example", "other@example.org"})
    listed = api.get(f"/api/v1/requests/{request.pk}/emails/").json()
    assert sorted(e["to_address"] for e in listed["results"]) == ["other@example.org", "zoe@xn--bcher-kva.example"]


@pytest.mark.django_db(transaction=True)
def test_idn_and_utf8_recipients_of_a_request_go_out_with_the_right_rcpt_and_to(smtp_server):
    request = addresses_request(
        [{"email": "ann@bücher.example", "name": "Ann Müller"}, {"email": "Jörg@Exämple.org", "name": "Jörg"}]
    )
    expand.expand(expand.claim_request())
    assert addresses_of(request) == ["ann@xn--bcher-kva.example", "jörg@xn--exmple-cua.org"]
    assert sending.send_due().sent == 2
    got = {tuple(m.rcpt_tos): m for m in smtp_server.received}
    assert set(got) == {("ann@xn--bcher-kva.example",), ("jörg@xn--exmple-cua.org",)}
    ann, jorg = got[("ann@xn--bcher-kva.example",)], got[("jörg@xn--exmple-cua.org",)]
    assert "SMTPUTF8" not in ann.mail_options and ann.data.isascii()
    assert [(a.display_name, a.addr_spec) for a in ann.message["To"].addresses] == [
        ("Ann Müller", "ann@xn--bcher-kva.example")
    ]
    assert "SMTPUTF8" in jorg.mail_options  # a UTF-8 local part (RFC 6531), its To header in UTF-8 (RFC 6532)
    to_line = next(line for line in jorg.data.split(b"\r\n") if line.startswith(b"To:"))
    assert to_line.startswith(b"To: =?utf-8?") and to_line.endswith("?= <jörg@xn--exmple-cua.org>".encode())
