import json
import threading

import pika
import pytest

from dbmail.models import UnmatchedTrackingEvent
from dbmail.track.consume import consume
from dbmail.track.events import TrackingEvent
from dbmail.track.queue import DatabaseQueue, QueueUnavailable, RabbitQueue, get_queue

from .tracking_support import RABBIT_URL, event


def wire(data):
    """An event as a producer puts it on the queue."""
    return TrackingEvent.from_dict(data).to_dict()


def events(n):
    return [wire(event(f"<m{i}@example.org>", n=i)) for i in range(n)]


@pytest.mark.django_db
def test_fetch_ack_and_release(queue_backend):
    queue = get_queue()
    queue.publish(events(5))
    first = queue.fetch(3)
    assert [d.payload["message_id"] for d in first] == ["<m0@example.org>", "<m1@example.org>", "<m2@example.org>"]
    rest = queue.fetch(10)
    assert len(rest) == 2  # what another fetch holds is not handed out twice
    queue.ack(first)
    queue.release(rest)
    again = queue.fetch(10)
    assert sorted(d.payload["message_id"] for d in again) == ["<m3@example.org>", "<m4@example.org>"]
    queue.ack(again)
    assert queue.fetch(10) == []


def test_the_backend_follows_the_settings(settings):
    assert isinstance(get_queue(), DatabaseQueue)
    settings.TRACKING_QUEUE_URL = RABBIT_URL
    rabbit = get_queue()
    assert isinstance(rabbit, RabbitQueue) and get_queue() is rabbit
    seen = []
    thread = threading.Thread(target=lambda: seen.append(get_queue()))
    thread.start(), thread.join()
    assert seen[0] is not rabbit  # a connection per thread


@pytest.mark.django_db
def test_rabbitmq_is_publish_subscribe_with_durable_persistent_messages(rabbit_backend, settings):
    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    channel = connection.channel()
    try:
        get_queue().publish(events(1))  # declares the exchange and our queue
        # Another subscriber binds its own queue to bounces only.
        theirs = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(theirs, settings.TRACKING_EXCHANGE, routing_key="bounced")
        get_queue().publish(
            [
                wire(event("<b@example.org>", "bounced")),
                wire(event("<d@example.org>", "delivered")),
            ]
        )
        method, properties, body = channel.basic_get(theirs, auto_ack=True)
        assert json.loads(body)["message_id"] == "<b@example.org>"
        assert properties.delivery_mode == 2 and properties.content_type == "application/json"
        assert channel.basic_get(theirs, auto_ack=True)[0] is None
        ours = channel.queue_declare(settings.TRACKING_QUEUE, passive=True).method
        assert ours.message_count == 3
        # The exchange and queue are durable: redeclaring them as non-durable is refused by the broker.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            channel.queue_declare(settings.TRACKING_QUEUE, durable=False)
    finally:
        connection.close()


@pytest.mark.django_db
def test_rabbitmq_recovers_when_our_queue_was_deleted_under_it(rabbit_backend, settings):
    get_queue().publish(events(1))
    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    connection.channel().queue_delete(settings.TRACKING_QUEUE)
    connection.close()
    # Unroutable with the queue gone: the publisher notices (mandatory + confirms), reconnects and redeclares.
    get_queue().publish(events(2))
    assert len(get_queue().fetch(10)) == 2


@pytest.mark.django_db
def test_a_foreign_message_that_is_not_json_is_kept_not_stuck(rabbit_backend, settings):
    get_queue().publish(events(1))
    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    connection.channel().basic_publish(settings.TRACKING_EXCHANGE, "delivered", b"\xff not json")
    connection.close()
    run = consume()
    assert (run.totals.unmatched, run.totals.invalid) == (1, 1)
    kept = UnmatchedTrackingEvent.objects.get(reason="invalid")
    assert kept.payload == {"raw": "\ufffd not json"}


def test_an_unreachable_broker_is_queue_unavailable(settings):
    settings.TRACKING_QUEUE_URL = "amqp://guest:guest@127.0.0.1:1/%2F"
    with pytest.raises(QueueUnavailable, match="cannot publish to RabbitMQ"):
        get_queue().publish(events(1))
    with pytest.raises(QueueUnavailable, match="cannot read from RabbitMQ"):
        get_queue().fetch(1)
