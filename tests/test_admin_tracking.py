"""The admin's side of delivery tracking (dbmail/admin.py): counts per request, history per email, unmatched events."""

import pytest
from django.urls import reverse

from dbmail.models import TextOfEmail, UnmatchedTrackingEvent
from dbmail.track.apply import apply_batch
from dbmail.track.queue import publish

from .factories import MessageRequestFactory, TextOfEmailFactory
from .tracking_support import event, tracked

Status = TextOfEmail.Status


@pytest.mark.django_db
def test_a_request_shows_delivered_bounced_and_complained_counts(admin_client):
    request = MessageRequestFactory()
    emails = [TextOfEmailFactory(request=request, status=Status.SENT) for _ in range(4)]
    apply_batch(
        [
            event(emails[0].message_id, "delivered"),
            event(emails[1].message_id, "delivered"),
            event(emails[2].message_id, "bounced", diagnostic="550 5.1.1 unknown"),
        ]
    )
    assert request.tracking_counts() == {"delivered": 2, "bounced": 1, "complained": 0}
    page = admin_client.get(reverse("admin:dbmail_messagerequest_change", args=[request.pk])).content.decode()
    assert "Delivered / bounced / complained" in page and "2 / 1 / 0" in page
    listing = admin_client.get(reverse("admin:dbmail_messagerequest_changelist")).content.decode()
    assert "2 / 1 / 0" in listing


@pytest.mark.django_db
def test_an_email_page_shows_its_tracking_history(admin_client):
    email = TextOfEmailFactory(status=Status.SENT)
    apply_batch(
        [
            event(email.message_id, "deferred", event_id="evt-77", diagnostic="451 4.7.1 greylisted"),
            event(email.message_id, "delivered", event_id="evt-78"),
        ]
    )
    page = admin_client.get(reverse("admin:dbmail_textofemail_change", args=[email.pk])).content.decode()
    assert "[evt-77] deferred from test for someone@example.net: 451 4.7.1 greylisted" in page
    assert "[evt-78] delivered from test" in page


@pytest.mark.django_db
def test_unmatched_events_are_listed_and_can_be_applied_again(admin_client):
    apply_batch([event("<later@example.org>", "delivered"), event("<never@example.org>", "bounced")])
    url = reverse("admin:dbmail_unmatchedtrackingevent_changelist")
    listing = admin_client.get(url).content.decode()
    assert "&lt;later@example.org&gt;" in listing and "2 unmatched tracking events" in listing
    email = TextOfEmailFactory(status=Status.SENT, message_id="<later@example.org>")
    response = admin_client.post(
        url,
        {
            "action": "apply_again",
            "_selected_action": list(UnmatchedTrackingEvent.objects.values_list("pk", flat=True)),
        },
        follow=True,
    )
    assert "Applied 1; still unmatched 1." in response.content.decode()
    email.refresh_from_db()
    assert email.status == Status.DELIVERED
    assert list(UnmatchedTrackingEvent.objects.values_list("message_id", flat=True)) == ["<never@example.org>"]


@pytest.mark.django_db
def test_the_database_queue_is_visible(admin_client, settings):
    settings.TRACKING_QUEUE_URL = ""
    publish(tracked("<waiting@example.org>"))
    page = admin_client.get(reverse("admin:dbmail_trackingqueueitem_changelist")).content.decode()
    assert "waiting@example.org" in page


@pytest.mark.django_db
def test_staff_only(client):
    response = client.get(reverse("admin:dbmail_unmatchedtrackingevent_changelist"))
    assert response.status_code == 302 and "/login/" in response["Location"]
