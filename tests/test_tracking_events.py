"""TrackingEvent (dbmail.track.events): checked when made, and the queue's JSON both ways."""

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbmail.track.events import BounceType, EventType, InvalidEvent, TrackingEvent, from_dicts


def normalise(data):
    """What goes on the queue for a JSON object that came in."""
    return TrackingEvent.from_dict(data).to_dict()


def test_from_dict_fills_every_key_and_brackets_the_message_id():
    data = normalise({"message_id": "abc@example.org", "event": "Delivered", "timestamp": 1700000000})
    assert data["message_id"] == "<abc@example.org>"
    assert data["event"] == "delivered"
    assert data["timestamp"] == "2023-11-14T22:13:20+00:00"
    assert data["source"] == "unknown" and data["recipient"] == "" and data["bounce_type"] is None
    # Without an id the same report always gets the same one, so retries are recognised.
    again = normalise({"message_id": "<abc@example.org>", "event": "delivered", "timestamp": "2023-11-14T22:13:20Z"})
    assert data["event_id"] == again["event_id"] and data["event_id"].startswith("sha256:")


def test_the_wire_format_is_what_earlier_versions_queued():
    """Events queued (and keys remembered) before TrackingEvent existed keep their meaning and their ids."""
    data = {
        "message_id": "abc@example.org",
        "event": " Bounced ",
        "timestamp": "2026-11-22T20:58:01+01:00",
        "diagnostic": " 550 5.1.1 user unknown ",
        "recipient": "Bob@example.net",
    }
    assert normalise(data) == {
        "event_id": "sha256:b61b13230255ca64e0deb61108924f42e1f52c67",
        "message_id": "<abc@example.org>",
        "tracking_id": "",
        "event": "bounced",
        "bounce_type": "hard",
        "recipient": "Bob@example.net",
        "timestamp": "2026-11-22T19:58:01+00:00",
        "diagnostic": "550 5.1.1 user unknown",
        "source": "unknown",
    }
    assert list(normalise(data)) == list(TrackingEvent.from_dict(data).to_dict())  # and in the same key order
    given_id = {"tracking_id": "42:abc", "event": "delivered", "timestamp": 1700000000, "bounce_type": "hard"}
    assert normalise({**given_id, "source": "webhook", "event_id": "e-1"}) == {
        "event_id": "e-1",
        "message_id": "",
        "tracking_id": "42:abc",
        "event": "delivered",
        "bounce_type": None,  # only a bounce has one
        "recipient": "",
        "timestamp": "2023-11-14T22:13:20+00:00",
        "diagnostic": "",
        "source": "webhook",
    }


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
def test_from_dict_refuses_bad_events_with_a_reason(data, error):
    with pytest.raises(InvalidEvent, match=error):
        TrackingEvent.from_dict(data)


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


def test_a_producer_gets_a_checked_event_or_an_error_where_it_builds_one():
    when = datetime(2026, 11, 22, 20, 0, tzinfo=timezone(timedelta(hours=1)))
    event = TrackingEvent(
        event=EventType.BOUNCED, message_id=" m@x ", timestamp=when, diagnostic="452 4.2.2 full", source="mailgate"
    )
    assert event.message_id == "<m@x>" and event.timestamp == when and event.timestamp.tzinfo is UTC
    assert event.bounce_type is BounceType.SOFT and event.key.startswith("mailgate:sha256:")
    assert event.describe() == "bounced (soft) from mailgate: 452 4.2.2 full"
    naive = TrackingEvent(event="delivered", tracking_id="1:x", timestamp=datetime(2026, 1, 1))
    assert naive.event is EventType.DELIVERED and naive.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidEvent, match="message_id or tracking_id is required"):
        TrackingEvent(event=EventType.DELIVERED, timestamp=when)
    with pytest.raises(InvalidEvent, match="recipient is longer than 254"):
        TrackingEvent(event=EventType.DELIVERED, message_id="<m@x>", timestamp=when, recipient="r" * 255)
    with pytest.raises(FrozenInstanceError):
        event.event = EventType.DELIVERED


def test_from_dicts_names_the_bad_one_among_several():
    good = {"message_id": "<a@b>", "event": "delivered", "timestamp": 1}
    assert [e.message_id for e in from_dicts([good, good])] == ["<a@b>", "<a@b>"]
    with pytest.raises(InvalidEvent, match="^event 1: event is required"):
        from_dicts([good, {"message_id": "<a@b>", "timestamp": 1}])
    with pytest.raises(InvalidEvent, match="^event is required"):  # alone, no index
        from_dicts([{"message_id": "<a@b>", "timestamp": 1}])


_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(
    kind=st.sampled_from(list(EventType)),
    message_id=_texts,
    tracking=_texts,
    recipient=_texts,
    diagnostic=st.text(max_size=60),
    bounce=st.sampled_from([None, "hard", "soft"]),
    source=st.text(max_size=20),
    event_id=st.text(max_size=30),
    when=st.datetimes(timezones=st.just(UTC)),
)
def test_to_dict_and_from_dict_give_back_the_same_event(
    kind, message_id, tracking, recipient, diagnostic, bounce, source, event_id, when
):
    try:
        event = TrackingEvent(
            event=kind,
            message_id=message_id,
            tracking_id=tracking,
            recipient=recipient,
            diagnostic=diagnostic,
            bounce_type=bounce,
            source=source,
            event_id=event_id,
            timestamp=when,
        )
    except InvalidEvent:
        return  # no id at all: refused, as it should be
    assert TrackingEvent.from_dict(event.to_dict()) == event
    assert normalise(event.to_dict()) == event.to_dict()


def test_an_event_may_name_its_email_by_the_mtas_queue_id_alone():
    data = normalise({"queue_id": " 4Bx7K2 ", "event": "delivered", "timestamp": 1700000000})
    assert (data["queue_id"], data["message_id"], data["tracking_id"]) == ("4Bx7K2", "", "")
    assert list(data)[:4] == ["event_id", "message_id", "tracking_id", "queue_id"]
    assert TrackingEvent.from_dict(data).to_dict() == data
    # Without one the JSON keeps the keys (and so the derived ids) of every earlier version.
    assert "queue_id" not in normalise({"message_id": "<a@b>", "event": "delivered", "timestamp": 1})
    with pytest.raises(InvalidEvent, match="queue_id is longer than 100"):
        TrackingEvent.from_dict({"queue_id": "Q" * 101, "event": "delivered", "timestamp": 1})
