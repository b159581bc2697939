"""mailgate.gate.complaints: ARF complaint reports -> one "complained" event for the email we find, never a bounce."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from dbmail import rollup, states
from dbmail.content import verp
from dbmail.models import DeliveryEvent, MessageRequest, Suppression, TextOfEmail
from dbmail.track.consume import consume
from dbmail.track.header import tracking_id
from mailgate.conf import settings as conf
from mailgate.gate import bounces, complaints
from mailgate.gate import receive as gate
from mailgate.models import Bounce, FeedbackReport, InboundMessage

from .factories import EmailListFactory, MessageRequestFactory, TextOfEmailFactory, mail_fixture

MID = "<176380000012.4242.9876543210@example.org>"  # the Message-ID the fixtures' reported copies carry
FBL = "fbl@example.org"
FIXTURES = ["arf_microsoft.eml", "arf_yahoo.eml"]
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def gate_settings(settings):
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"
    settings.MAILGATE_COMPLAINT_ADDRESSES = [FBL]


@pytest.fixture
def sent_email():
    request = MessageRequestFactory(status=states.RequestStatus.EXPANDED, expanded_at=timezone.now())
    return TextOfEmailFactory(
        request=request, message_id=MID, to_address="bob@example.net", status=TextOfEmail.Status.SENT
    )


def report(name, email, tracking=True, return_path=True):
    """A fixture report about `email`: its signed tracking header and VERP address filled in (or left out)."""
    raw = mail_fixture(name)
    address = verp.envelope_sender(email.message_id, "office@example.org").encode()
    raw = raw.replace(b"RETURN-PATH", address) if return_path else re.sub(rb"(?m)^.*RETURN-PATH.*\n", b"", raw)
    value = tracking_id(email.pk).encode()
    return raw.replace(b"TRACKING-ID", value) if tracking else re.sub(rb"(?m)^X-Mailsite-Email:.*\n", b"", raw)


def run_gate(raw, recipient=FBL, sender="staff@hotmail.com"):
    """The gate, then the tracking job that applies what it published (as dbmail_track does)."""
    result = gate.run(raw, recipient, sender)
    assert result.code == 0, result.message
    consume()
    return result, InboundMessage.objects.get(pk=result.inbound_id)


def assert_unchanged(email):
    email.refresh_from_db()
    assert email.status == TextOfEmail.Status.SENT
    assert not Suppression.objects.exists()
    assert not email.events.filter(kind=DeliveryEvent.Kind.TRACKING).exists()


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("where", ["complaint-address", "verp", "null-sender"])
def test_a_providers_report_gives_one_complaint_for_the_emails_own_address(sent_email, name, where):
    recipient, sender = {
        "complaint-address": (FBL, "staff@hotmail.com"),
        "verp": (verp.envelope_sender(MID, "x"), "feedback@arf.mail.yahoo.com"),
        "null-sender": ("postmaster@example.org", ""),
    }[where]
    result, inbound = run_gate(report(name, sent_email), recipient, sender)
    assert inbound.status == InboundMessage.Status.COMPLAINT and "applied" in result.message
    row = FeedbackReport.objects.get()
    assert (row.email, row.feedback_type, row.applied) == (sent_email, "abuse", True)
    assert row.identified_by == FeedbackReport.Identified.TRACKING_HEADER  # the strongest of those it carries
    assert list(Suppression.objects.values_list("address", "reason")) == [("bob@example.net", "complained")]
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.COMPLAINED
    (event,) = sent_email.events.filter(kind=DeliveryEvent.Kind.TRACKING)
    assert event.outcome == "complained" and "complained from mailgate for bob@example.net" in event.text
    assert not Bounce.objects.exists()  # never a bounce


def test_the_report_and_its_copy_naming_another_address_suppress_only_the_emails_own(sent_email):
    raw = report("arf_microsoft.eml", sent_email)
    raw = raw.replace(b"Original-Rcpt-To: <bob@example.net>", b"Original-Rcpt-To: <mallory@example.net>")
    raw = raw.replace(b"Source-IP:", b"Removal-Recipient: mallory@example.net\nSource-IP:")
    raw = raw.replace(b"To: bob@example.net", b"To: mallory@example.net").replace(b"<bob@", b"<mallory@")
    assert b"bob@" not in raw.split(b"message/rfc822", 1)[1].split(b"\n\n", 2)[1]  # the copy names only mallory
    run_gate(raw)
    assert list(Suppression.objects.values_list("address", flat=True)) == ["bob@example.net"]


@pytest.mark.parametrize(
    "keep, identified_by",
    [
        ("tracking", FeedbackReport.Identified.TRACKING_HEADER),
        ("return-path", FeedbackReport.Identified.VERP),
        ("original-mail-from", FeedbackReport.Identified.VERP),
        ("envelope", FeedbackReport.Identified.VERP),
        ("message-id", FeedbackReport.Identified.MESSAGE_ID),
    ],
)
def test_each_identifier_we_made_finds_the_email_alone(sent_email, keep, identified_by):
    raw = report("arf_yahoo.eml", sent_email, tracking=keep == "tracking", return_path=False)
    address = verp.envelope_sender(MID, "x").encode()
    if keep == "return-path":
        raw = raw.replace(b"Received: from 192.0.2.25", b"Return-Path: <" + address + b">\nReceived: from 192.0.2.25")
    if keep == "original-mail-from":
        raw = raw.replace(b"Original-Rcpt-To:", b"Original-Mail-From: <" + address + b">\nOriginal-Rcpt-To:")
    if keep != "message-id":
        raw = raw.replace(MID.encode(), b"<elsewhere-1@example.com>")
    run_gate(raw, address.decode() if keep == "envelope" else FBL)
    row = FeedbackReport.objects.get()
    assert (row.email, row.identified_by, row.applied) == (sent_email, identified_by, True)
    assert list(Suppression.objects.values_list("address", flat=True)) == ["bob@example.net"]


def test_a_copy_with_only_its_header_section_is_read_too(sent_email):
    raw = report("arf_yahoo.eml", sent_email)
    raw = raw.replace(b"Content-Type: message/rfc822", b"Content-Type: text/rfc822-headers")
    raw = raw.replace(b"\nDear Bob,\nyour address is bob@example.net.\n", b"")
    run_gate(raw)
    assert FeedbackReport.objects.get().applied
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.COMPLAINED


@pytest.mark.parametrize("kind", ["not-spam", "virus", "other", "auth-failure", "opt-out"])
def test_reports_other_than_abuse_or_fraud_are_recorded_and_change_nothing(sent_email, kind):
    raw = report("arf_microsoft.eml", sent_email).replace(b"Feedback-Type: abuse", f"Feedback-Type: {kind}".encode())
    _, inbound = run_gate(raw)
    row = FeedbackReport.objects.get()
    assert (row.email, row.feedback_type, row.applied) == (sent_email, kind, False)
    assert "not applied" in row.note and "not applied" in inbound.note
    assert_unchanged(sent_email)


@pytest.mark.parametrize("kind", [b"Feedback-Type: fraud", b"Feedback-Type: ABUSE", b""])
def test_fraud_and_a_missing_type_are_complaints(sent_email, kind):
    raw = report("arf_microsoft.eml", sent_email).replace(b"Feedback-Type: abuse\n", kind + b"\n" if kind else b"")
    run_gate(raw)
    row = FeedbackReport.objects.get()
    assert row.applied and row.feedback_type == (kind.split(b": ")[1].decode().lower() if kind else "abuse")
    assert Suppression.objects.get().address == "bob@example.net"


def _forged_tracking(raw, email):
    return raw.replace(
        tracking_id(email.pk).encode(), f"{email.pk}:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".encode()
    )


def _other_pk(raw, email):
    return raw.replace(tracking_id(email.pk).encode(), tracking_id(email.pk + 1000).encode())


def _unknown_ids(raw, email):
    raw = re.sub(rb"(?m)^(X-Mailsite-Email|Return-Path|Original-Mail-From):.*\n", b"", raw)
    return raw.replace(MID.encode(), b"<made-up-1@example.org>")


def _forged_verp(raw, email):
    address = verp.envelope_sender(MID, "x").encode()
    return raw.replace(address, address[: address.index(b"@") - 3] + b"zzz" + address[address.index(b"@") :])


def _two_emails(raw, email):
    other = TextOfEmailFactory(to_address="carol@example.net", status=TextOfEmail.Status.SENT)
    return raw.replace(MID.encode(), other.message_id.encode())


@pytest.mark.parametrize(
    "forge, why",
    [
        (_forged_tracking, "forged or damaged"),
        (_other_pk, "does not exist"),
        (_unknown_ids, "names none of our emails"),
        (_forged_verp, "forged or damaged"),
        (_two_emails, "2 different emails"),
    ],
    ids=["tracking-signature-fails", "tracking-no-such-email", "unknown-ids", "verp-forged", "two-emails"],
)
def test_forged_and_unmatched_reports_are_recorded_and_change_nothing(sent_email, forge, why):
    _, inbound = run_gate(forge(report("arf_microsoft.eml", sent_email), sent_email))
    row = FeedbackReport.objects.get()
    assert (row.email, row.applied) == (None, False) and why in row.note
    assert inbound.status == InboundMessage.Status.COMPLAINT and "unmatched" in inbound.note
    assert_unchanged(sent_email)
    assert TextOfEmail.objects.exclude(status=TextOfEmail.Status.SENT).count() == 0


@pytest.mark.parametrize("recipient, sender", [("verp", "staff@hotmail.com"), ("postmaster@example.org", "")])
def test_a_report_is_never_a_bounce(sent_email, settings, recipient, sender):
    """Before: to a VERP address or from the null sender it went through the bounce reader, which stored it as
    a bounce finding (and flufl.bounce's detectors could read the reported recipient as a failure)."""
    settings.MAILGATE_COMPLAINT_ADDRESSES = []
    raw = report("arf_yahoo.eml", sent_email)
    run_gate(raw, verp.envelope_sender(MID, "x") if recipient == "verp" else recipient, sender)
    assert not Bounce.objects.exists()
    assert FeedbackReport.objects.get().applied
    assert not Suppression.objects.filter(reason="bounced").exists()
    counts = rollup.per_request([sent_email.request_id])[sent_email.request_id]
    assert counts["hard_bounced"] == 0 and counts[states.EmailStatus.COMPLAINED] == 1


def test_the_complaint_counts_for_the_reputation_guard(sent_email, settings):
    settings.DBMAIL_GUARD_MIN_SENT = 1
    rollup.count([(rollup.day_of(timezone.now()), sent_email.account_id, sent_email.request_id, "sent")])
    run_gate(report("arf_microsoft.eml", sent_email))
    request = MessageRequest.objects.get(pk=sent_email.request_id)
    assert request.status == states.RequestStatus.PAUSED and "drew a complaint" in request.paused_reason


def test_a_report_elsewhere_from_a_sender_is_ordinary_mail(sent_email, settings):
    """Only where reports arrive: an ARF posted to a list (someone forwarding one) is forwarded, not applied."""
    settings.MAILGATE_SEND_NOW_MAX = 0
    EmailListFactory(name="Staff", regex="staff", addresses="admin@example.org")
    result, inbound = run_gate(report("arf_microsoft.eml", sent_email), "staff@lists.example.org", "ann@example.com")
    assert inbound.status == InboundMessage.Status.FORWARDED
    assert not FeedbackReport.objects.exists() and not Suppression.objects.exists()


def test_other_mail_to_the_complaint_address_is_kept_not_bounced(sent_email, settings):
    result, inbound = run_gate(mail_fixture("plain.eml"), FBL, "noreply@yahoo.com")
    assert result.message.startswith("accepted") and inbound.status == InboundMessage.Status.RECEIVED
    assert "not a complaint report" in inbound.note and not FeedbackReport.objects.exists()
    # With a +extension too; and a list routing the address still gets it.
    assert complaints.is_complaint_address("FBL+yahoo@example.org")
    settings.MAILGATE_COMPLAINT_ADDRESSES = ["Abuse@Example.org"]  # as a Python settings file may write it
    assert complaints.is_complaint_address("abuse@example.org")
    assert not complaints.is_complaint_address("fbl@example.net")


def test_event_shape_through_the_single_publish_point(sent_email, monkeypatch):
    published = []
    monkeypatch.setattr(bounces.queue, "publish", published.append)
    gate.run(report("arf_yahoo.eml", sent_email), FBL, "feedback@arf.mail.yahoo.com")
    (tracked,) = published
    event = tracked.to_dict()
    assert event["event"] == "complained" and event["message_id"] == MID and event["source"] == "mailgate"
    assert event["recipient"] == "bob@example.net" and event["event_id"].startswith("mailgate-complaint-")
    assert "Yahoo!-Mail-Feedback/2.0" in event["diagnostic"]


def test_reports_show_in_the_admin_matched_or_not(sent_email, admin_client):
    run_gate(report("arf_microsoft.eml", sent_email))
    _, unmatched = run_gate(_unknown_ids(report("arf_yahoo.eml", sent_email), sent_email))
    changelist = reverse("admin:mailgate_feedbackreport_changelist")
    page = admin_client.get(changelist).content.decode()
    assert "Hotmail FBL" in page and "Yahoo!-Mail-Feedback/2.0" in page
    assert "Hotmail FBL" not in admin_client.get(changelist, {"matched": "no"}).content.decode()
    detail = admin_client.get(reverse("admin:mailgate_inboundmessage_change", args=[unmatched.pk])).content.decode()
    assert "names none of our emails" in detail


def test_the_setting_is_checked_and_named(settings):
    settings.MAILGATE_COMPLAINT_ADDRESSES = ["fbl@example.org", "not an address"]
    (problem,) = conf.problems()
    assert "MAILGATE_COMPLAINT_ADDRESSES" in problem[1] and "'not an address'" in problem[1]
    settings.MAILGATE_COMPLAINT_ADDRESSES = ["fbl@example.org"]
    assert conf.problems() == []


def test_a_report_not_parsed_whole_is_recorded_not_applied(sent_email, monkeypatch):
    # Past the parsing limits the parts (and so the Feedback-Type) are never read: the VERP address still
    # names the email, but whether it is a complaint is unknown.
    monkeypatch.setattr("mailgate.gate.parsing.MAX_PARTS", 2)
    run_gate(report("arf_microsoft.eml", sent_email), verp.envelope_sender(MID, "x"))
    row = FeedbackReport.objects.get()
    assert (row.email, row.applied) == (sent_email, False) and "not parsed whole" in row.note
    assert_unchanged(sent_email)
    assert not Bounce.objects.exists()


def test_a_bounce_carrying_a_report_deeper_down_is_a_bounce(sent_email):
    # A forward of a report (someone posted one to a list) bounced back whole to the forward's VERP address:
    # the report is inside the returned message, not the message itself.
    inner = report("arf_microsoft.eml", sent_email)
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\nSubject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="d"\n\n'
        b"--d\nContent-Type: text/plain\n\nIt failed.\n"
        b"--d\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n"
        b"Final-Recipient: rfc822; bob@example.net\nAction: failed\nStatus: 5.1.1\n\n"
        b"--d\nContent-Type: message/rfc822\n\n" + inner + b"\n--d--\n"
    )
    _, inbound = run_gate(raw, verp.envelope_sender(MID, "x"), "")
    assert inbound.status == InboundMessage.Status.BOUNCE and not FeedbackReport.objects.exists()
    assert Bounce.objects.get().bounce_type == "hard"
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.BOUNCED
