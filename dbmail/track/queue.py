"""The tracking queue: one interface, two backends, and publish() for every producer.

RabbitMQ when TRACKING_QUEUE_URL is an amqp:// URL: a durable topic exchange
(TRACKING_EXCHANGE, routing key = the event type, so other subscribers can
bind their own queues to all or some events), our durable queue
(TRACKING_QUEUE) bound to it with "#", persistent messages and publisher
confirms. Otherwise a database table does the same job.

Both give at-least-once delivery: publish() returns only once the event is
stored durably; fetch() hands out events that stay owned by the consumer
until ack(); a consumer that dies before ack() has them redelivered
(RabbitMQ when the connection drops, the table when the lease runs out).
"""

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from dbmail.conf import settings as conf
from dbmail.exceptions import QueueUnavailable
from dbmail.models import TrackingQueueItem


@dataclass
class Delivery:
    payload: object  # the event as published (or {"raw": text} when it was not JSON)
    tag: object  # backend-specific handle for ack()/release()


class DatabaseQueue:
    """Events as rows; a consumer leases rows and deletes them on ack."""

    def publish(self, events):
        try:
            TrackingQueueItem.objects.bulk_create([TrackingQueueItem(payload=event) for event in events])
        except DatabaseError as exc:
            raise QueueUnavailable(f"cannot store tracking events in the database: {exc}".strip()) from exc

    def fetch(self, limit):
        now = timezone.now()
        token = uuid.uuid4()
        free = Q(leased_until__isnull=True) | Q(leased_until__lte=now)
        try:
            with transaction.atomic():
                ids = list(
                    TrackingQueueItem.objects.select_for_update(skip_locked=True)
                    .filter(free)
                    .order_by("id")
                    .values_list("id", flat=True)[:limit]
                )
                # Re-checking the lease keeps this right where SKIP LOCKED is a no-op (SQLite).
                TrackingQueueItem.objects.filter(free, id__in=ids).update(
                    claim_token=token,
                    leased_until=now + timedelta(seconds=conf.DBMAIL_LEASE_SECONDS),
                    deliveries=F("deliveries") + 1,
                )
            rows = TrackingQueueItem.objects.filter(claim_token=token).order_by("id").values_list("id", "payload")
            return [Delivery(payload, (pk, token)) for pk, payload in rows]
        except DatabaseError as exc:
            raise QueueUnavailable(f"cannot read tracking events from the database: {exc}".strip()) from exc

    def ack(self, deliveries):
        for token, ids in _by_token(deliveries).items():
            TrackingQueueItem.objects.filter(id__in=ids, claim_token=token).delete()

    def release(self, deliveries):
        for token, ids in _by_token(deliveries).items():
            TrackingQueueItem.objects.filter(id__in=ids, claim_token=token).update(claim_token=None, leased_until=None)

    def close(self):
        pass


def _by_token(deliveries):
    groups = {}
    for delivery in deliveries:
        pk, token = delivery.tag
        groups.setdefault(token, []).append(pk)
    return groups


class RabbitQueue:
    """Events as persistent AMQP messages, through one blocking pika connection per thread."""

    def __init__(self, url, exchange, queue):
        import pika  # only needed when RabbitMQ is configured

        self.pika = pika
        self.params = pika.URLParameters(url)
        self.exchange = exchange
        self.queue = queue
        self._connection = None
        self._channel = None

    def _open(self):
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = self.pika.BlockingConnection(self.params)
        channel = self._connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        # Declared by publishers too: an exchange with no queue bound would drop what it gets.
        channel.queue_declare(self.queue, durable=True)
        channel.queue_bind(self.queue, self.exchange, routing_key="#")
        self._channel = channel
        return channel

    def _errors(self):
        return (self.pika.exceptions.AMQPError, OSError)

    def publish(self, events):
        properties = self.pika.BasicProperties(
            delivery_mode=self.pika.DeliveryMode.Persistent, content_type="application/json"
        )
        # A cached connection may have died since the last request: one fresh try before giving up.
        for attempt in (1, 2):
            try:
                channel = self._open()
                for event in events:
                    # With confirms on, this returns once the broker has the message on disk, or raises.
                    channel.basic_publish(
                        self.exchange, event["event"], json.dumps(event).encode(), properties, mandatory=True
                    )
                return
            except self._errors() as exc:
                self.close()
                if attempt == 2:
                    raise QueueUnavailable(f"cannot publish to RabbitMQ: {exc!r}") from exc

    def fetch(self, limit):
        try:
            channel = self._open()
            deliveries = []
            while len(deliveries) < limit:
                method, _properties, body = channel.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                # Delivery tags belong to their channel: remember which one.
                deliveries.append(Delivery(_decode(body), (channel, method.delivery_tag)))
            return deliveries
        except self._errors() as exc:
            self.close()
            raise QueueUnavailable(f"cannot read from RabbitMQ: {exc!r}") from exc

    def ack(self, deliveries):
        for channel, tag in _last_tags(deliveries):
            try:
                channel.basic_ack(tag, multiple=True)
            except self._errors() as exc:
                self.close()  # they will be redelivered; applying them again changes nothing
                raise QueueUnavailable(f"cannot acknowledge to RabbitMQ: {exc!r}") from exc

    def release(self, deliveries):
        for channel, tag in _last_tags(deliveries):
            try:
                channel.basic_nack(tag, multiple=True, requeue=True)
            except self._errors():
                self.close()  # closing the channel requeues them as well

    def close(self):
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except self._errors():
                pass  # already gone; the broker requeues whatever was unacknowledged


def _last_tags(deliveries):
    """(channel, highest tag) per channel, for acknowledging everything up to it at once."""
    last = {}
    for delivery in deliveries:
        channel, tag = delivery.tag
        last[id(channel)] = (channel, max(tag, last.get(id(channel), (None, 0))[1]))
    return list(last.values())


def _decode(body):
    try:
        return json.loads(body)
    except ValueError:
        return {"raw": body.decode("utf-8", "replace")}


def publish(event):
    """Put one TrackingEvent on the tracking queue; durable when this returns (QueueUnavailable if not)."""
    publish_many([event])


def publish_many(events):
    """Put TrackingEvents on the tracking queue as their to_dict() JSON, all of them or none."""
    payloads = [event.to_dict() for event in events]
    if payloads:
        get_queue().publish(payloads)


_local = threading.local()


def get_queue():
    """This thread's queue for the current settings (connections are not shared between threads)."""
    config = (conf.TRACKING_QUEUE_URL, conf.TRACKING_EXCHANGE, conf.TRACKING_QUEUE)
    cached = getattr(_local, "queue", None)
    if cached is None or _local.config != config:
        if cached is not None:
            cached.close()
        _local.queue = RabbitQueue(*config) if config[0] else DatabaseQueue()
        _local.config = config
    return _local.queue
