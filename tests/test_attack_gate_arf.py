"""Attacks on complaint reports (mailgate.gate.complaints): a report made to complain of someone else, to
complain twice, or to cost the gate more than a report should. Through the real gate and the tracking job."""

import re

import pytest

from dbmail import rollup
from dbmail.content import verp
from dbmail.models import DeliveryEvent, Suppression, TextOfEmail
from dbmail.track.header import tracking_id
from mailgate.models import FeedbackReport, InboundMessage

from .conftest import time_limit
from .factories import EmailListFactory, TextOfEmailFactory, mail_fixture
from .test_mailgate_complaints import FBL, MID, assert_unchanged, gate_settings, report, run_gate, sent_email

__all__ = ["gate_settings", "sent_email"]  # the fixtures, used by name
pytestmark = pytest.mark.django_db


class Slow(Exception):
    pass


@pytest.fixture
def carol():
    return TextOfEmailFactory(to_address="carol@example.net", status=TextOfEmail.Status.SENT)


def unmatched(why):
    row = FeedbackReport.objects.get()
    assert (row.email, row.applied) == (None, False) and why in row.note
    return row


@pytest.mark.parametrize("where", ["return-path", "original-mail-from", "envelope"])
def test_our_tracking_header_for_one_email_and_a_verp_address_of_another_is_unmatched(sent_email, carol, where):
    """Each identifier is genuine, but they name two emails: the report is about neither."""
    raw = report("arf_yahoo.eml", sent_email, return_path=False)
    carols = verp.envelope_sender(carol.message_id, "office@example.org").encode()
    recipient = FBL
    if where == "return-path":
        raw = raw.replace(b"X-Mailsite-Email:", b"Return-Path: <" + carols + b">\nX-Mailsite-Email:")
    elif where == "original-mail-from":
        raw = raw.replace(b"Original-Rcpt-To:", b"Original-Mail-From: <" + carols + b">\nOriginal-Rcpt-To:")
    else:
        recipient = carols.decode()
    run_gate(raw, recipient)
    unmatched("names 2 different emails")
    assert_unchanged(sent_email)
    carol.refresh_from_db()
    assert carol.status == TextOfEmail.Status.SENT


def test_a_repeated_report_suppresses_and_counts_once(sent_email):
    raw = report("arf_microsoft.eml", sent_email)
    for _ in range(3):  # the provider resends, or someone replays it
        run_gate(raw)
    assert FeedbackReport.objects.filter(email=sent_email).count() == 3  # each report is recorded
    assert list(Suppression.objects.values_list("address", "reason")) == [("bob@example.net", "complained")]
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.COMPLAINED
    events = sent_email.events.filter(kind=DeliveryEvent.Kind.TRACKING)
    assert events.count() == 3 and {e.outcome for e in events} == {"complained"}  # logged, status moved once
    counts = rollup.per_request([sent_email.request_id])[sent_email.request_id]
    assert counts[TextOfEmail.Status.COMPLAINED] == 1


def test_a_report_about_a_report_is_about_nothing_of_ours(sent_email):
    """The reported copy is itself a report about bob's email: only the copy's own fields are read."""
    inner = report("arf_microsoft.eml", sent_email)
    outer = mail_fixture("arf_yahoo.eml").replace(b"RETURN-PATH", b"office@example.org")
    start = outer.index(b"Content-Disposition: inline\n\n") + len(b"Content-Disposition: inline\n\n")
    outer = outer[:start] + inner + outer[outer.index(b"\n------=_Part_3fd7_1--") :]
    assert outer.count(tracking_id(sent_email.pk).encode()) == 1  # only inside the inner report's copy
    run_gate(outer)
    unmatched("names none of our emails")
    assert_unchanged(sent_email)


def test_thousands_of_identifiers_cost_little_and_only_the_first_are_read(sent_email, django_assert_max_num_queries):
    junk = b"".join(b"Message-ID: <junk-%d@example.com>\n" % i for i in range(5000))
    ids = b" ".join([b"<x-%d@example.com>" % i for i in range(5000)] + [MID.encode()])  # ours among them
    tracking = b"".join(b"X-Mailsite-Email: %d:AAAA\n" % i for i in range(5000))
    for extra, why in [
        (junk, "names none of our emails"),  # ours is the 5001st Message-ID: past the first 10
        (ids, "names none of our emails"),  # the copy's one Message-ID field naming thousands: none is ours
        (tracking, "forged or damaged"),
    ]:
        FeedbackReport.objects.all().delete()
        raw = report("arf_yahoo.eml", sent_email, tracking=False, return_path=False)
        if extra is ids:
            raw = raw.replace(MID.encode(), ids)
        else:
            raw = raw.replace(b"From: The Office", extra + b"From: The Office")
        with time_limit(10, Slow), django_assert_max_num_queries(40):
            run_gate(raw)
        unmatched(why)
    assert_unchanged(sent_email)


def test_a_report_to_a_complaint_address_with_an_extension_applies(sent_email):
    _, inbound = run_gate(report("arf_microsoft.eml", sent_email), "FBL+jmrp@Example.org")
    assert inbound.status == InboundMessage.Status.COMPLAINT and FeedbackReport.objects.get().applied


def test_a_null_sender_report_at_a_list_address_is_a_report_not_a_post(sent_email, settings):
    settings.MAILGATE_SEND_NOW_MAX = 0
    EmailListFactory(name="Staff", regex="staff", addresses="admin@example.org")
    before = TextOfEmail.objects.count()
    _, inbound = run_gate(report("arf_microsoft.eml", sent_email), "staff@lists.example.org", "")
    assert inbound.status == InboundMessage.Status.COMPLAINT
    assert TextOfEmail.objects.count() == before  # forwarded to nobody
    assert list(Suppression.objects.values_list("address", flat=True)) == ["bob@example.net"]


def test_a_forged_report_cannot_name_carol_through_her_message_id_in_another_field(sent_email, carol):
    """Carol's Message-ID in References or In-Reply-To of the copy is no identifier: only its Message-ID is."""
    raw = report("arf_yahoo.eml", sent_email, tracking=False, return_path=False)
    raw = raw.replace(MID.encode(), b"<elsewhere-1@example.com>")
    raw = raw.replace(
        b"MIME-Version: 1.0\nContent-Type: text/plain",
        f"References: {carol.message_id}\nIn-Reply-To: {carol.message_id}\n".encode()
        + b"MIME-Version: 1.0\nContent-Type: text/plain",
    )
    assert re.search(rb"References: <", raw)
    run_gate(raw)
    unmatched("names none of our emails")
    carol.refresh_from_db()
    assert carol.status == TextOfEmail.Status.SENT and not Suppression.objects.exists()
