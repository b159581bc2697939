import itertools
import uuid

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from dbmail.models import (
    AppliedTrackingEvent,
    DeliveryEvent,
    Suppression,
    TextOfEmail,
    TrackingQueueItem,
    UnmatchedTrackingEvent,
)
from dbmail.send import claims, outcomes, retry
from dbmail.send import loop as sending
from dbmail.states import TRACKING_RANK as RANK
from dbmail.track import apply as tracking
from dbmail.track.apply import EVENT_TRANSITION, InvalidEvent, apply_batch, next_status, normalise

from .factories import TextOfEmailFactory
from .tracking_support import event

Status = TextOfEmail.Status


def tracking_rows(email):
    return list(email.events.filter(kind=DeliveryEvent.Kind.TRACKING).order_by("at", "id"))


# --- The precedence table ---


def test_every_status_has_a_rank_and_every_event_a_status():
    assert set(RANK) == set(Status.values)
    assert set(EVENT_TRANSITION) == set(tracking.EVENTS)


@given(start=st.sampled_from(list(Status)), events=st.lists(st.sampled_from(tracking.EVENTS), max_size=6))
def test_no_event_sequence_moves_an_email_backwards_and_order_does_not_matter(start, events):
    status = start
    for kind in events:
        after = next_status(status, kind)
        assert RANK[after] >= RANK[status]
        status = after
    for permutation in itertools.islice(itertools.permutations(events), 24):
        other = start
        for kind in permutation:
            other = next_status(other, kind)
        assert other == status


@pytest.mark.parametrize(
    "current, kind, expected",
    [
        (Status.SENT, "delivered", Status.DELIVERED),
        (Status.DELIVERED, "deferred", Status.DELIVERED),
        (Status.SENT, "deferred", Status.SENT),
        (Status.SENDING, "deferred", Status.SENT),
        (Status.DELIVERED, "bounced", Status.BOUNCED),
        (Status.BOUNCED, "delivered", Status.BOUNCED),
        (Status.DELIVERED, "complained", Status.COMPLAINED),
        (Status.COMPLAINED, "bounced", Status.COMPLAINED),
        (Status.SENT, "rejected", Status.DROPPED),
        (Status.SENT, "opened", Status.DELIVERED),
    ],
)
def test_table(current, kind, expected):
    assert next_status(current, kind) == expected


# --- The normalised event ---


def test_normalise_fills_every_key_and_brackets_the_message_id():
    data = normalise({"message_id": "abc@example.org", "event": "Delivered", "timestamp": 1700000000})
    assert data["message_id"] == "<abc@example.org>"
    assert data["event"] == "delivered"
    assert data["timestamp"] == "2023-11-14T22:13:20+00:00"
    assert data["source"] == "unknown" and data["recipient"] == "" and data["bounce_type"] is None
    # Without an id the same report always gets the same one, so retries are recognised.
    again = normalise({"message_id": "<abc@example.org>", "event": "delivered", "timestamp": "2023-11-14T22:13:20Z"})
    assert data["event_id"] == again["event_id"] and data["event_id"].startswith("sha256:")


@pytest.mark.parametrize(
    "data, error",
    [
        ([], "JSON object"),
        ({"message_id": "<a@b>", "timestamp": 1}, "event is required"),
        ({"message_id": "<a@b>", "event": "clicked", "timestamp": 1}, "is not one of"),
        ({"event": "delivered", "timestamp": 1}, "message_id or tracking_id"),
        ({"message_id": "<a@b>", "event": "delivered"}, "timestamp is required"),
        ({"message_id": "<a@b>", "event": "delivered", "timestamp": "yesterday"}, "not ISO 8601"),
        ({"message_id": "<a@b>", "event": "bounced", "bounce_type": "medium", "timestamp": 1}, "bounce_type"),
        ({"message_id": 42, "event": "delivered", "timestamp": 1}, "message_id must be a string"),
        ({"message_id": "<a@b>", "event": "delivered", "timestamp": 1, "event_id": "x" * 201}, "longer than"),
    ],
)
def test_normalise_refuses_bad_events_with_a_reason(data, error):
    with pytest.raises(InvalidEvent, match=error):
        normalise(data)


@pytest.mark.parametrize(
    "diagnostic, expected",
    [
        ("550 5.1.1 user unknown", "hard"),
        ("452 4.2.2 mailbox full", "soft"),
        ("smtp; 5.7.1 blocked", "hard"),
        ("", None),
    ],
)
def test_bounce_type_is_inferred_from_the_reply_when_not_given(diagnostic, expected):
    data = normalise({"message_id": "<a@b>", "event": "bounced", "timestamp": 1, "diagnostic": diagnostic})
    assert data["bounce_type"] == expected


def test_tracking_ids_are_signed():
    value = tracking.tracking_id(42)
    assert tracking.email_pk_from_tracking_id(value) == 42
    assert tracking.email_pk_from_tracking_id(value.replace("42:", "43:")) is None
    assert tracking.email_pk_from_tracking_id("garbage") is None


# --- Applying a batch ---


@pytest.mark.django_db
def test_a_batch_updates_statuses_and_logs_every_event():
    a, b = TextOfEmailFactory(status=Status.SENT), TextOfEmailFactory(status=Status.SENT)
    result = apply_batch([event(a.message_id, "delivered"), event(b.message_id, "deferred", diagnostic="451 later")])
    assert (result.applied, result.changed, result.duplicates, result.unmatched) == (2, 1, 0, 0)
    a.refresh_from_db(), b.refresh_from_db()
    assert a.status == Status.DELIVERED and b.status == Status.SENT
    [row] = tracking_rows(b)
    assert row.outcome == Status.SENT and row.smtp_code == 451 and "deferred from test" in row.text


@pytest.mark.django_db
def test_applying_the_same_events_twice_changes_nothing():
    email = TextOfEmailFactory(status=Status.SENT)
    events = [event(email.message_id, "delivered"), event(email.message_id, "opened")]
    apply_batch(events)
    again = apply_batch(events + [events[0]])
    assert (again.applied, again.duplicates) == (0, 3)
    assert len(tracking_rows(email)) == 2


@pytest.mark.django_db
def test_a_late_deferral_does_not_move_a_delivered_email_backwards():
    email = TextOfEmailFactory(status=Status.SENT)
    now = timezone.now()
    late = event(email.message_id, "deferred", timestamp=(now - timezone.timedelta(minutes=5)).isoformat())
    apply_batch([event(email.message_id, "delivered", timestamp=now.isoformat())])
    result = apply_batch([late])
    email.refresh_from_db()
    assert email.status == Status.DELIVERED and result.changed == 0 and result.applied == 1
    assert [r.outcome for r in tracking_rows(email)] == ["delivered", "delivered"]


@pytest.mark.django_db
def test_hard_bounces_and_complaints_suppress_the_address_soft_bounces_do_not():
    hard = TextOfEmailFactory(status=Status.SENT, to_address="Hard@Example.net")
    soft = TextOfEmailFactory(status=Status.SENT)
    rude = TextOfEmailFactory(status=Status.SENT)
    apply_batch(
        [
            event(hard.message_id, "bounced", diagnostic="550 5.1.1 no such user"),
            event(soft.message_id, "bounced", bounce_type="soft", diagnostic="452 mailbox full"),
            event(rude.message_id, "complained"),
        ]
    )
    assert dict(Suppression.objects.values_list("address", "reason")) == {
        "hard@example.net": "bounced",
        rude.to_address: "complained",
    }
    hard.refresh_from_db(), soft.refresh_from_db()
    assert hard.status == soft.status == Status.BOUNCED
    assert hard.last_error == "550 5.1.1 no such user"


@pytest.mark.django_db
def test_an_address_already_suppressed_keeps_its_reason():
    email = TextOfEmailFactory(status=Status.SENT)
    Suppression.objects.create(address=email.to_address, reason=Suppression.Reason.UNSUBSCRIBED)
    apply_batch([event(email.message_id, "complained")])
    assert Suppression.objects.get().reason == Suppression.Reason.UNSUBSCRIBED


@pytest.mark.django_db
def test_unknown_and_invalid_events_are_kept_and_counted():
    result = apply_batch([event("<nobody@example.org>", "bounced"), {"event": "delivered"}, "not even an object"])
    assert (result.unmatched, result.invalid, result.applied) == (1, 2, 0)
    reasons = sorted(UnmatchedTrackingEvent.objects.values_list("reason", flat=True))
    assert reasons == ["invalid", "invalid", "unknown-email"]
    unknown = UnmatchedTrackingEvent.objects.get(reason="unknown-email")
    assert unknown.message_id == "<nobody@example.org>" and unknown.payload["event"] == "bounced"
    assert UnmatchedTrackingEvent.objects.get(payload="not even an object").error == "an event must be a JSON object"
    # Redelivered, they are not kept twice.
    apply_batch([{"event": "delivered"}])
    assert UnmatchedTrackingEvent.objects.count() == 3


@pytest.mark.django_db
def test_unmatched_events_can_be_applied_again_once_their_email_exists():
    message_id = f"<{uuid.uuid4().hex}@example.org>"
    apply_batch([event(message_id, "delivered")])
    email = TextOfEmailFactory(status=Status.SENT, message_id=message_id)
    result = tracking.retry_unmatched(UnmatchedTrackingEvent.objects.all())
    assert result.applied == 1 and not UnmatchedTrackingEvent.objects.exists()
    email.refresh_from_db()
    assert email.status == Status.DELIVERED


@pytest.mark.django_db
def test_the_tracking_header_finds_the_email_and_a_forged_one_does_not():
    email = TextOfEmailFactory(status=Status.SENT)
    forged = tracking.tracking_id(email.pk)[:-2] + "xx"
    result = apply_batch(
        [
            event("", "delivered", tracking_id=tracking.tracking_id(email.pk)),
            event("", "complained", tracking_id=forged),
        ]
    )
    assert (result.applied, result.unmatched) == (1, 1)
    email.refresh_from_db()
    assert email.status == Status.DELIVERED


@pytest.mark.django_db
def test_an_event_for_an_email_still_being_sent_wins_over_the_senders_late_outcome():
    """The crash window: the MTA has the mail and reports it before the sender recorded its 250."""
    TextOfEmailFactory()
    claim = claims.claim(10)
    [email] = claim.emails
    apply_batch([event(email.message_id, "delivered")])
    outcomes.record(email, claim.token, retry.Outcome("sent", 250, "ok"))
    email.refresh_from_db()
    assert email.status == Status.DELIVERED and email.claim_token is None
    # ...and a sender whose lease runs out does not send it again.
    assert not claims.claim(10, now=timezone.now() + timezone.timedelta(days=1)).emails


# --- Through the queue, on both backends ---


@pytest.mark.django_db
def test_published_events_are_applied_by_the_job(queue_backend):
    emails = TextOfEmailFactory.create_batch(5, status=Status.SENT)
    tracking.publish_many([event(e.message_id, "delivered") for e in emails])
    tracking.publish(event(emails[0].message_id, "bounced", diagnostic="550 5.1.1 gone"))
    run = tracking.consume(batch_size=2)
    assert run.batches == 3 and run.totals.applied == 6 and run.totals.changed == 6
    statuses = sorted(TextOfEmail.objects.values_list("status", flat=True))
    assert statuses == ["bounced", "delivered", "delivered", "delivered", "delivered"]
    assert tracking.consume().batches == 0  # all acknowledged


@pytest.mark.django_db
def test_publish_checks_every_event_before_queueing_any(queue_backend):
    with pytest.raises(InvalidEvent, match="event 1: event is required"):
        tracking.publish_many([event("<a@b>"), {"message_id": "<a@b>", "timestamp": 1}])
    assert tracking.consume().batches == 0


@pytest.mark.django_db
def test_a_failed_batch_is_given_back_and_applied_later(queue_backend, monkeypatch):
    email = TextOfEmailFactory(status=Status.SENT)
    tracking.publish(event(email.message_id, "delivered"))

    def broken(payloads, now=None):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(tracking, "apply_batch", broken)
    with pytest.raises(RuntimeError):
        tracking.consume()
    monkeypatch.undo()
    assert tracking.consume().totals.applied == 1
    email.refresh_from_db()
    assert email.status == Status.DELIVERED


@pytest.mark.django_db
def test_the_database_backend_redelivers_after_a_dead_consumers_lease(settings):
    settings.TRACKING_QUEUE_URL = ""
    email = TextOfEmailFactory(status=Status.SENT)
    tracking.publish(event(email.message_id, "delivered"))
    from dbmail.track.queue import get_queue

    taken = get_queue().fetch(10)  # a consumer that then dies without acknowledging
    assert len(taken) == 1 and get_queue().fetch(10) == []
    TrackingQueueItem.objects.update(leased_until=timezone.now())
    assert tracking.consume().totals.applied == 1
    assert not TrackingQueueItem.objects.exists() and AppliedTrackingEvent.objects.count() == 1


@pytest.mark.django_db
def test_every_outbound_email_carries_its_signed_tracking_header(smtp_server):
    email = TextOfEmailFactory()
    assert sending.send_due().sent == 1
    [received] = smtp_server.received
    header = received.message[tracking.TRACKING_HEADER]
    assert tracking.email_pk_from_tracking_id(header) == email.pk
    # An MTA that reports our header instead of the Message-ID reaches the same email.
    apply_batch([event("", "delivered", tracking_id=header)])
    email.refresh_from_db()
    assert email.status == Status.DELIVERED
