"""Shared pieces for the tracking tests: both queue backends, a breakable path to RabbitMQ, events."""

import socket
import threading
import uuid

import pytest
from django.utils import timezone

from dbmail.track import queue as tracking_queue
from dbmail.track.events import TrackingEvent

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture(params=["database", "rabbitmq"])
def queue_backend(request, settings):
    """The tracking queue under test: the database table, or RabbitMQ with names of its own."""
    if request.param == "database":
        settings.TRACKING_QUEUE_URL = ""
        yield request.param
    else:
        yield from _rabbit(settings, request.param)


@pytest.fixture
def rabbit_backend(settings):
    """RabbitMQ only, with an exchange and queue of this test's own."""
    yield from _rabbit(settings, "rabbitmq")


def _rabbit(settings, value):
    name = f"mailsite.test.{uuid.uuid4().hex[:12]}"
    settings.TRACKING_QUEUE_URL = RABBIT_URL
    settings.TRACKING_EXCHANGE = name
    settings.TRACKING_QUEUE = f"{name}.dbmail"
    yield value
    tracking_queue.get_queue().close()
    delete_rabbit(name, f"{name}.dbmail")


def delete_rabbit(exchange, *queues):
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    channel = connection.channel()
    for queue in queues:
        channel.queue_delete(queue)
    channel.exchange_delete(exchange)
    connection.close()


def event(message_id, kind="delivered", n=1, **extra):
    """An event as the queue and webhooks carry it: a JSON object."""
    data = {
        "event_id": f"ev-{kind}-{n}-{uuid.uuid4().hex[:6]}",
        "message_id": message_id,
        "event": kind,
        "bounce_type": None,
        "recipient": "someone@example.net",
        "timestamp": timezone.now().isoformat(),
        "diagnostic": "",
        "source": "test",
    }
    data.update(extra)
    return data


def tracked(message_id, kind="delivered", n=1, **extra):
    """The same event as a producer builds it."""
    return TrackingEvent.from_dict(event(message_id, kind, n, **extra))


class TCPProxy:
    """Forwards a local port to RabbitMQ; stop() cuts every connection, as a broker outage would."""

    def __init__(self, target=("127.0.0.1", 5672)):
        self.target = target
        self.port = None
        self.listener = None
        self.sockets = []
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F?connection_attempts=1&socket_timeout=3"

    def start(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port or 0))
        self.port = self.listener.getsockname()[1]
        self.listener.listen()
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread; close() alone would not
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets = []
