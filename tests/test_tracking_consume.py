"""The consume job (dbmail.track.consume): batches off the queue, applied, then acknowledged, on both backends."""

import pytest
from django.utils import timezone

from dbmail.models import AppliedTrackingEvent, TextOfEmail, TrackingQueueItem
from dbmail.track import apply
from dbmail.track.consume import ConsumeResult, consume
from dbmail.track.queue import get_queue, publish, publish_many

from .factories import TextOfEmailFactory
from .tracking_support import tracked

Status = TextOfEmail.Status


@pytest.mark.django_db
def test_published_events_are_applied_by_the_job(queue_backend):
    emails = TextOfEmailFactory.create_batch(5, status=Status.SENT)
    publish_many([tracked(e.message_id, "delivered") for e in emails])
    publish(tracked(emails[0].message_id, "bounced", diagnostic="550 5.1.1 gone"))
    run = consume(batch_size=2)
    assert isinstance(run, ConsumeResult)
    assert run.batches == 3 and run.totals.applied == 6 and run.totals.changed == 6
    assert run.summary().startswith("applied 6 (6 changed a status), duplicates 0") and "in 3 batches" in run.summary()
    statuses = sorted(TextOfEmail.objects.values_list("status", flat=True))
    assert statuses == ["bounced", "delivered", "delivered", "delivered", "delivered"]
    assert consume().batches == 0  # all acknowledged


@pytest.mark.django_db
def test_max_batches_and_a_stop_request_end_the_run_early(queue_backend):
    emails = TextOfEmailFactory.create_batch(3, status=Status.SENT)
    publish_many([tracked(e.message_id) for e in emails])
    assert consume(batch_size=1, max_batches=2).batches == 2
    assert consume(should_stop=lambda: True).batches == 0
    assert consume().totals.applied == 1


@pytest.mark.django_db
def test_a_failed_batch_is_given_back_and_applied_later(queue_backend, monkeypatch):
    email = TextOfEmailFactory(status=Status.SENT)
    publish(tracked(email.message_id, "delivered"))

    def broken(payloads, now=None):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(apply, "apply_batch", broken)
    with pytest.raises(RuntimeError):
        consume()
    monkeypatch.undo()
    assert consume().totals.applied == 1
    email.refresh_from_db()
    assert email.status == Status.DELIVERED


@pytest.mark.django_db
def test_the_database_backend_redelivers_after_a_dead_consumers_lease(settings):
    settings.TRACKING_QUEUE_URL = ""
    email = TextOfEmailFactory(status=Status.SENT)
    publish(tracked(email.message_id, "delivered"))
    taken = get_queue().fetch(10)  # a consumer that then dies without acknowledging
    assert len(taken) == 1 and get_queue().fetch(10) == []
    TrackingQueueItem.objects.update(leased_until=timezone.now())
    assert consume().totals.applied == 1
    assert not TrackingQueueItem.objects.exists() and AppliedTrackingEvent.objects.count() == 1
