"""The applier (dbmail.track.apply): the precedence table, batches, duplicates, unmatched events."""

import itertools
import uuid

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from dbmail.models import (
    DeliveryEvent,
    Suppression,
    TextOfEmail,
    UnmatchedTrackingEvent,
)
from dbmail.send import claims, outcomes, retry
from dbmail.states import TRACKING_RANK as RANK
from dbmail.track.apply import EVENT_TRANSITION, apply_batch, next_status, retry_unmatched
from dbmail.track.events import EventType, TrackingEvent
from dbmail.track.header import tracking_id

from .factories import TextOfEmailFactory
from .tracking_support import event

Status = TextOfEmail.Status


def tracking_rows(email):
    return list(email.events.filter(kind=DeliveryEvent.Kind.TRACKING).order_by("at", "id"))


# --- The precedence table ---


def test_every_status_has_a_rank_and_every_event_a_status():
    assert set(RANK) == set(Status.values)
    assert set(EVENT_TRANSITION) == set(EventType)


@given(start=st.sampled_from(list(Status)), events=st.lists(st.sampled_from(list(EventType)), max_size=6))
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
    result = retry_unmatched(UnmatchedTrackingEvent.objects.all())
    assert result.applied == 1 and not UnmatchedTrackingEvent.objects.exists()
    email.refresh_from_db()
    assert email.status == Status.DELIVERED


@pytest.mark.django_db
def test_the_tracking_header_finds_the_email_and_a_forged_one_does_not():
    email = TextOfEmailFactory(status=Status.SENT)
    forged = tracking_id(email.pk)[:-2] + "xx"
    result = apply_batch(
        [
            event("", "delivered", tracking_id=tracking_id(email.pk)),
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


@pytest.mark.django_db
def test_events_built_by_a_producer_apply_like_their_json():
    """The applier takes TrackingEvents as well as what it reads off the queue."""
    a, b = TextOfEmailFactory(status=Status.SENT), TextOfEmailFactory(status=Status.SENT)
    built = TrackingEvent(event=EventType.BOUNCED, message_id=a.message_id, timestamp=timezone.now(), diagnostic="550")
    result = apply_batch([built, event(b.message_id, "complained")])
    assert (result.applied, result.changed) == (2, 2)
    a.refresh_from_db(), b.refresh_from_db()
    assert (a.status, b.status) == (Status.BOUNCED, Status.COMPLAINED)
    # Applied under its key: the same report off the queue later is a duplicate.
    assert apply_batch([built.to_dict()]).duplicates == 1
