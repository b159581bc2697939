import base64
import json
from datetime import UTC, datetime

import pytest
from anymail.signals import AnymailTrackingEvent
from anymail.signals import tracking as anymail_tracking
from django.core import mail
from django.urls import include, path

from dbmail.models import Suppression, TextOfEmail
from dbmail.send.loop import send_due
from dbmail.track import anymail as anymail_events
from dbmail.track.consume import consume
from dbmail.track.events import TrackingEvent
from dbmail.track.header import tracking_id

from .factories import TextOfEmailFactory

Status = TextOfEmail.Status
WHEN = datetime(2026, 11, 22, 19, 0, tzinfo=UTC)

# This module is also the URLconf of its webhook tests: a site includes anymail's URLs like this.
urlpatterns = [path("anymail/", include("anymail.urls"))]


@pytest.fixture
def anymail_site(settings):
    settings.ROOT_URLCONF = __name__
    settings.ANYMAIL = {"WEBHOOK_SECRET": "esp:webhook-password-0123456789"}


def esp_event(**kwargs):
    defaults = dict(
        event_type="delivered",
        timestamp=WHEN,
        event_id="esp-1",
        message_id="esp-msg-1",
        recipient="ann@example.net",
        metadata={},
    )
    return AnymailTrackingEvent(**{**defaults, **kwargs})


def test_the_receiver_is_connected_once():
    assert anymail_events.connect() is True
    assert anymail_tracking.has_listeners()
    assert len([r for r in anymail_tracking.receivers if r[0][0] == "dbmail.track.anymail"]) == 1


@pytest.mark.parametrize(
    "event_type, ours",
    [
        ("delivered", "delivered"),
        ("bounced", "bounced"),
        ("failed", "rejected"),
        ("rejected", "rejected"),
        ("deferred", "deferred"),
        ("complained", "complained"),
        ("opened", "opened"),
        ("clicked", None),
        ("queued", None),
        ("unknown", None),
    ],
)
def test_event_types(event_type, ours):
    event = anymail_events.to_event(esp_event(event_type=event_type), "Postmark")
    assert (event and event.event) == ours
    if event:
        assert isinstance(event, TrackingEvent)  # checked when made: always a valid event
        assert event.source == "anymail:Postmark" and event.timestamp == WHEN


@pytest.mark.django_db
def test_outbound_mail_carries_its_tracking_id_as_anymail_metadata(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    email = TextOfEmailFactory()
    assert send_due().sent == 1
    [sent] = mail.outbox
    assert sent.anymail_test_params["metadata"] == {"mailsite_email": tracking_id(email.pk)}
    assert sent.extra_headers["X-Mailsite-Email"] == tracking_id(email.pk)


@pytest.mark.django_db
def test_a_provider_webhook_updates_the_email(client, anymail_site, queue_backend):
    email = TextOfEmailFactory(status=Status.SENT)
    body = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "ID": 4242,
        "Email": email.to_address,
        "BouncedAt": "2026-11-22T19:00:00Z",
        "Details": "smtp;550 5.1.1 The email account does not exist",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"mailsite_email": tracking_id(email.pk)},
    }
    auth = "Basic " + base64.b64encode(b"esp:webhook-password-0123456789").decode()
    response = client.post(
        "/anymail/postmark/tracking/", json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=auth
    )
    assert response.status_code == 200
    assert consume().totals.applied == 1
    email.refresh_from_db()
    assert email.status == Status.BOUNCED and "does not exist" in email.last_error
    assert Suppression.objects.get().address == email.to_address
    # Without the password anymail refuses it.
    refused = client.post("/anymail/postmark/tracking/", json.dumps(body), content_type="application/json")
    assert refused.status_code == 400


@pytest.mark.django_db
def test_a_queue_outage_fails_the_providers_call_so_it_retries(client, anymail_site, settings):
    settings.TRACKING_QUEUE_URL = "amqp://guest:guest@127.0.0.1:1/%2F"
    client.raise_request_exception = False
    body = {
        "RecordType": "Delivery",
        "Recipient": "a@example.net",
        "DeliveredAt": "2026-11-22T19:00:00Z",
        "MessageID": "x",
        "Metadata": {"mailsite_email": "1:abc"},
    }
    auth = "Basic " + base64.b64encode(b"esp:webhook-password-0123456789").decode()
    response = client.post(
        "/anymail/postmark/tracking/", json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=auth
    )
    assert response.status_code == 500
