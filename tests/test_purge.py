import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dbmail.models import DeliveryEvent, TextOfEmail
from dbmail.ops.purge import parse_duration

from .factories import MessageRequestFactory, TextOfEmailFactory

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status


def test_purge_removes_old_finished_mail_and_keeps_request_totals():
    request = MessageRequestFactory(status="expanded")
    old = timezone.now() - timedelta(days=10)
    for status in (Status.SENT, Status.SENT, Status.DROPPED, Status.CANCELLED):
        email = TextOfEmailFactory(request=request, status=status, status_changed_at=old)
        DeliveryEvent.objects.create(email=email, kind="attempt", outcome=status)
    recent = TextOfEmailFactory(request=request, status=Status.SENT)
    waiting = TextOfEmailFactory(request=request, status=Status.DEFERRED, status_changed_at=old)
    out = io.StringIO()
    call_command("dbmail_purge", "--older-than", "7d", stdout=out)
    assert "removed 4" in out.getvalue()
    assert set(TextOfEmail.objects.values_list("pk", flat=True)) == {recent.pk, waiting.pk}
    assert not DeliveryEvent.objects.exists()
    request.refresh_from_db()
    assert request.status_counts() == {"sent": 3, "dropped": 1, "cancelled": 1, "deferred": 1}


def test_durations():
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration(" 30m ") == timedelta(minutes=30)
    assert parse_duration("2w") == timedelta(weeks=2)
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(CommandError, match="--older-than"):
        call_command("dbmail_purge", "--older-than", "soon")


def test_purge_also_clears_old_tracking_bookkeeping(settings):
    from dbmail.models import AppliedTrackingEvent, UnmatchedTrackingEvent, WebhookSignature

    settings.TRACKING_WEBHOOK_MAX_AGE = 300
    old = timezone.now() - timedelta(days=10)
    AppliedTrackingEvent.objects.create(key="mta:old", applied_at=old)
    AppliedTrackingEvent.objects.create(key="mta:new")
    UnmatchedTrackingEvent.objects.create(key="mta:x", event="delivered", payload={}, received_at=old)
    WebhookSignature.objects.create(signature="a" * 64, seen_at=timezone.now() - timedelta(minutes=11))
    WebhookSignature.objects.create(signature="b" * 64)
    out = io.StringIO()
    call_command("dbmail_purge", "--older-than", "7d", stdout=out)
    assert "3 tracking records" in out.getvalue()
    assert list(AppliedTrackingEvent.objects.values_list("key", flat=True)) == ["mta:new"]
    assert not UnmatchedTrackingEvent.objects.exists()
    assert list(WebhookSignature.objects.values_list("signature", flat=True)) == ["b" * 64]


def test_the_fast_purge_does_to_every_relation_what_the_orms_delete_would():
    """On PostgreSQL the purge deletes with plain statements; the same rows go and stay as with delete()."""
    from dbmail.models import SpoolFile, SpoolItem, TextOfEmail
    from dbmail.ops import purge
    from mailgate.models import Bounce, InboundMessage

    old = timezone.now() - timedelta(days=10)
    email = TextOfEmailFactory(status=Status.SENT, status_changed_at=old)
    DeliveryEvent.objects.create(email=email, kind="attempt", outcome=Status.SENT)
    spool = SpoolFile.objects.create(name="a.xml", sha256="0" * 64, location="a.xml")
    SpoolItem.objects.create(email=email, file=spool, position=1, fld_time=old)
    inbound = InboundMessage.objects.create(envelope_recipient="bounces@example.org", raw=b"x")
    bounce = Bounce.objects.create(inbound=inbound, email=email, bounce_type=Bounce.Type.HARD)
    plan = purge._fast_plan()
    # Every relation to an email has its statement (a new one would otherwise be left dangling).
    tables = {rel.through._meta.db_table if rel.many_to_many else rel.related_model._meta.db_table
              for rel in TextOfEmail._meta.related_objects}  # fmt: skip
    assert all(any(f'"{table}"' in sql for sql in plan) for table in tables)
    assert purge.purge(timedelta(days=7)) == 1
    assert not TextOfEmail.objects.filter(pk=email.pk).exists()
    assert not DeliveryEvent.objects.exists() and not SpoolItem.objects.exists()
    bounce.refresh_from_db()
    assert bounce.email_id is None  # SET_NULL: the bounce itself stays, history


def test_a_receiver_of_delete_signals_makes_the_purge_use_the_orm():
    from django.db.models.signals import post_delete

    from dbmail.ops import purge

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.pk)

    post_delete.connect(receiver, sender=TextOfEmail)
    try:
        assert purge._fast_plan() is None
        email = TextOfEmailFactory(status=Status.SENT, status_changed_at=timezone.now() - timedelta(days=10))
        assert purge.purge(timedelta(days=7)) == 1
    finally:
        post_delete.disconnect(receiver, sender=TextOfEmail)
    assert seen == [email.pk]


def test_purge_also_forgets_old_idempotency_keys_of_the_sending_api():
    from dbmail.models import ApiSend

    from .factories import UserFactory

    user = UserFactory()
    ApiSend.objects.create(
        user=user, key="old", payload_sha256="0" * 64, created_at=timezone.now() - timedelta(days=10)
    )
    ApiSend.objects.create(user=user, key="new", payload_sha256="0" * 64)
    out = io.StringIO()
    call_command("dbmail_purge", "--older-than", "7d", stdout=out)
    assert "1 API idempotency keys" in out.getvalue()
    assert list(ApiSend.objects.values_list("key", flat=True)) == ["new"]


def _orphans():
    """Log rows naming an email that is not there (the log's email has no database constraint: 0021)."""
    return DeliveryEvent.objects.exclude(email_id__in=TextOfEmail.objects.values("pk"))


@pytest.mark.parametrize("fast", [True, False], ids=["statements", "orm"])
def test_purge_leaves_no_log_row_naming_a_purged_email(monkeypatch, fast):
    from dbmail.ops import purge

    if not fast:
        monkeypatch.setattr(purge, "_fast_plan", lambda: None)
    old = timezone.now() - timedelta(days=10)
    gone = TextOfEmailFactory.create_batch(3, status=Status.SENT, status_changed_at=old)
    kept = TextOfEmailFactory(status=Status.SENT)
    for email in (*gone, kept):
        DeliveryEvent.objects.create(email=email, kind="attempt", outcome=Status.SENT)
        DeliveryEvent.objects.create(email=email, kind="tracking", outcome=Status.DELIVERED)
    assert purge.purge(timedelta(days=7), chunk=2) == 3  # two chunks
    assert not _orphans().exists()
    assert sorted(DeliveryEvent.objects.values_list("email_id", "outcome")) == [
        (kept.pk, Status.DELIVERED),
        (kept.pk, Status.SENT),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_log_row_written_while_the_purge_waits_for_its_email_goes_with_it():
    """dbmail_track locks the emails it records for: a log row it commits while the purge waits is purged too."""

    from django.db import transaction

    from .conftest import wait_until

    email = TextOfEmailFactory(status=Status.SENT, status_changed_at=timezone.now() - timedelta(days=10))
    thread, purged, purge_waits = _purge_in_a_thread()
    with transaction.atomic():
        TextOfEmail.objects.select_for_update().get(pk=email.pk)
        thread.start()
        wait_until(purge_waits, seconds=10)
        DeliveryEvent.objects.create(email=email, kind="tracking", outcome=Status.DELIVERED)
    thread.join(10)
    assert purged == [1]
    assert not TextOfEmail.objects.filter(pk=email.pk).exists()
    assert not _orphans().exists()


@pytest.mark.django_db(transaction=True)
def test_an_email_retried_while_the_purge_waits_for_it_is_kept_and_not_counted():
    """An admin's "retry now" (dropped -> queued) committed while the purge waits for the row: the email stays."""

    from django.db import transaction

    from dbmail import states

    from .conftest import wait_until

    request = MessageRequestFactory(status="expanded")
    email = TextOfEmailFactory(
        request=request, status=Status.DROPPED, status_changed_at=timezone.now() - timedelta(days=10)
    )
    thread, purged, purge_waits = _purge_in_a_thread()
    with transaction.atomic():
        assert states.RETRY.update(TextOfEmail.objects.filter(pk=email.pk), status_changed_at=timezone.now()) == 1
        thread.start()
        wait_until(purge_waits, seconds=10)
    thread.join(10)
    assert purged == [0]
    email.refresh_from_db()
    assert email.status == Status.QUEUED
    request.refresh_from_db()
    assert request.status_counts() == {"queued": 1}


def _purge_in_a_thread():
    """(a thread that purges emails older than 7 days when started, its results, whether it waits for a lock)."""
    import threading

    from django.db import connection

    from dbmail.ops import purge

    backend, purged = [], []

    def purging():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend.append(cursor.fetchone()[0])
            purged.append(purge.purge(timedelta(days=7)))
        finally:
            connection.close()

    def purge_waits():
        with connection.cursor() as cursor:  # pg_locks is read live, also inside a transaction
            cursor.execute("SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND NOT granted)", backend[:1] or [0])
            return cursor.fetchone()[0]

    return threading.Thread(target=purging), purged, purge_waits
