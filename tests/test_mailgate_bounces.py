import pytest

from dbmail.content import verp
from dbmail.models import DeliveryEvent, Suppression, TextOfEmail
from dbmail.track.consume import consume
from mailgate.gate import bounces
from mailgate.gate import receive as gate
from mailgate.models import Bounce, InboundMessage

from .factories import TextOfEmailFactory, mail_fixture

MID = "<176380000012.4242.9876543210@example.org>"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def verp_on(settings):
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"


@pytest.fixture
def sent_email():
    return TextOfEmailFactory(message_id=MID, to_address="bob@example.net", status=TextOfEmail.Status.SENT)


def run_gate(raw, recipient):
    """The gate, then the tracking job that applies what it published (as dbmail_track does)."""
    result = gate.run(raw, recipient, "")
    consume()
    return result


def bounce_to_verp(fixture, email):
    result = run_gate(mail_fixture(fixture), verp.envelope_sender(email.message_id, "x"))
    assert result.code == 0
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert inbound.status == InboundMessage.Status.BOUNCE
    return inbound


@pytest.mark.parametrize(
    "fixture, kind, code",
    [
        ("dsn_rfc3464_hard.eml", "hard", "5.1.1"),
        ("dsn_rfc3464_soft.eml", "soft", "4.2.2"),
        ("dsn_exim.eml", "hard", "5.1.1"),
        ("dsn_qmail.eml", "hard", "5.1.1"),
    ],
)
def test_dialects_give_the_bounce_type_and_diagnostic(sent_email, fixture, kind, code):
    inbound = bounce_to_verp(fixture, sent_email)
    (bounce,) = inbound.bounces.all()
    assert (bounce.bounce_type, bounce.status_code, bounce.email, bounce.applied) == (kind, code, sent_email, True)
    assert bounce.recipient == "bob@example.net"
    assert bounce.diagnostic
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.BOUNCED
    event = sent_email.events.get(kind=DeliveryEvent.Kind.TRACKING)
    assert event.outcome == "bounced" and f"bounced ({kind}) from mailgate" in event.text
    assert Suppression.objects.filter(address="bob@example.net", reason="bounced").exists() == (kind == "hard")


def test_rfc3464_diagnostic_is_the_diagnostic_code(sent_email):
    inbound = bounce_to_verp("dsn_rfc3464_hard.eml", sent_email)
    assert "Recipient address rejected: User unknown" in inbound.bounces.get().diagnostic


def test_a_delay_warning_changes_nothing(sent_email):
    inbound = bounce_to_verp("dsn_delayed.eml", sent_email)
    bounce = inbound.bounces.get()
    assert (bounce.bounce_type, bounce.applied) == ("delayed", False)
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.SENT
    assert not Suppression.objects.exists()


def test_a_vacation_reply_to_a_verp_address_is_stored_unrecognised(sent_email):
    inbound = bounce_to_verp("vacation.eml", sent_email)
    assert inbound.bounces.get().bounce_type == "unknown"
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.SENT


def test_a_bounce_after_delivery_wins_and_a_complaint_is_never_undone(sent_email):
    # "delivered" only says the next hop took it; the final server may still bounce it later.
    TextOfEmail.objects.filter(pk=sent_email.pk).update(status=TextOfEmail.Status.DELIVERED)
    bounce_to_verp("dsn_rfc3464_hard.eml", sent_email)
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.BOUNCED
    TextOfEmail.objects.filter(pk=sent_email.pk).update(status=TextOfEmail.Status.COMPLAINED)
    bounce_to_verp("dsn_exim.eml", sent_email)
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.COMPLAINED


def test_forged_verp_address_is_stored_unmatched(sent_email):
    good = verp.envelope_sender(MID, "x")
    forged = good[: good.index("@") - 3] + "zzz" + good[good.index("@") :]
    result = run_gate(mail_fixture("dsn_rfc3464_hard.eml"), forged)
    assert result.code == 0
    bounce = Bounce.objects.get(inbound_id=result.inbound_id)
    assert bounce.email is None and not bounce.applied
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.SENT
    assert not Suppression.objects.exists()


def test_null_sender_report_without_verp_is_matched_by_the_returned_message_id(settings, sent_email):
    settings.DBMAIL_VERP_DOMAIN = ""
    result = run_gate(mail_fixture("dsn_rfc3464_hard.eml"), "office@example.org")
    assert result.code == 0
    bounce = Bounce.objects.get(inbound_id=result.inbound_id)
    assert bounce.email == sent_email and bounce.bounce_type == "hard"
    sent_email.refresh_from_db()
    assert sent_email.status == TextOfEmail.Status.BOUNCED


def test_unmatched_reports_are_kept_and_visible():
    result = run_gate(mail_fixture("dsn_rfc3464_hard.eml"), "office@example.org")
    assert result.code == 0
    bounce = Bounce.objects.get(inbound_id=result.inbound_id)
    assert (bounce.email, bounce.recipient, bounce.bounce_type) == (None, "bob@example.net", "hard")
    assert InboundMessage.objects.get(pk=result.inbound_id).status == InboundMessage.Status.BOUNCE


def test_event_shape_and_the_single_publish_point(sent_email, monkeypatch):
    published = []
    monkeypatch.setattr(bounces.queue, "publish", published.append)
    bounce_to_verp("dsn_rfc3464_hard.eml", sent_email)
    (tracked,) = published
    event = tracked.to_dict()  # what goes on the queue
    assert set(event) == {
        "event_id", "message_id", "tracking_id", "event", "bounce_type", "recipient", "timestamp", "diagnostic",
        "source",
    }  # fmt: skip
    assert event["message_id"] == MID and event["event"] == "bounced" and event["source"] == "mailgate"
    assert event["bounce_type"] == "hard" and event["recipient"] == "bob@example.net"
    assert "T" in event["timestamp"] and event["event_id"].startswith("mailgate-bounce-")


def test_a_sending_claim_cannot_overwrite_the_bounce(sent_email):
    import uuid

    token = uuid.uuid4()
    TextOfEmail.objects.filter(pk=sent_email.pk).update(status=TextOfEmail.Status.SENDING, claim_token=token)
    bounce_to_verp("dsn_rfc3464_hard.eml", sent_email)
    sent_email.refresh_from_db()
    assert sent_email.status == "bounced" and sent_email.claim_token is None


def test_dsn_parser_reads_every_recipient_block():
    from mailgate.gate import parsing

    raw = mail_fixture("dsn_rfc3464_hard.eml").replace(
        b"--dsn-b1\nContent-Description: Undelivered",
        b"Final-Recipient: rfc822; cy@example.net\nAction: failed\nStatus: 4.4.7\n\n"
        b"--dsn-b1\nContent-Description: Undelivered",
    )
    found = bounces.dsn_failures(parsing.parse(raw).message)
    assert [(f.recipient, f.bounce_type, f.status_code) for f in found] == [
        ("bob@example.net", "hard", "5.1.1"),
        ("cy@example.net", "soft", "4.4.7"),
    ]
