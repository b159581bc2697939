"""A request's history is its AuditEvents (dbmail.audit): one writer, one row per step, never changed.

The migration 0020_events on real rows (there and back), each step of a request's life writing
exactly one event whichever screen asked, the request page's history, and an event refusing every
update and delete: the model's, the queryset's and plain SQL's.
"""

import uuid
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone

from dbmail import audit, states
from dbmail.intake import expand
from dbmail.models import AuditEvent, MessageRequest
from dbmail.panel.views.requests import history_of
from dbmail.track import guard

from .factories import MessageRequestFactory, TextOfEmailFactory, UserFactory
from .sendingapi import client_for, composer

R = states.RequestStatus
BEFORE, AFTER = [("dbmail", "0019_expand")], [("dbmail", "0020_events")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_the_migration_copies_every_request_event_in_order_once_on_the_page_and_back():
    ann, bob = UserFactory(username="ann"), UserFactory(username="bob")
    first, second = MessageRequestFactory(subject="First"), MessageRequestFactory(subject="Second")
    t = timezone.now() - timedelta(days=3)
    try:
        old = _migrate(BEFORE)
        RequestEvent, OldAudit = old.get_model("dbmail", "RequestEvent"), old.get_model("dbmail", "AuditEvent")

        def audit_row(at, user, action, mail, detail=""):
            return OldAudit.objects.create(
                at=at, actor_id=user.pk, actor_name=user.username, action=action, request_id=mail.pk,
                target_type="dbmail.messagerequest", target_id=str(mail.pk), target=str(mail), detail=detail,
            )  # fmt: skip

        def event(at, kind, mail, user=None, text=""):
            return RequestEvent.objects.create(
                at=at, kind=kind, request_id=mail.pk, user_id=user and user.pk, text=text
            )

        audit_row(t, ann, "create draft", first)
        event(t + timedelta(minutes=1), "failure", first, text="set failed\n\nTraceback (most recent call last):\n  x")
        event(t + timedelta(minutes=2), "retry", first, ann, "retry: expansion resumes after position 199")
        audit_row(t + timedelta(minutes=2, milliseconds=5), ann, "retry (API)", first)  # both shown before
        event(t + timedelta(minutes=3), "cancel", first, ann)  # written both ways: its twin stands for both
        audit_row(t + timedelta(minutes=3, milliseconds=300), ann, "cancel", first, "4 email(s) stopped before sending")
        event(t + timedelta(minutes=1), "pause", second, text="26 of 500 emails sent bounced hard")
        event(t + timedelta(minutes=2), "resume", second, bob, "resumed; the guard now judges only the mail sent")
        audit_row(t + timedelta(minutes=2, milliseconds=100), bob, "resume", second, "resumed; the guard now judges")
        event(t + timedelta(minutes=4), "cancel", second, bob)  # from a shell: no twin, so it is copied
        original = sorted(RequestEvent.objects.values_list("request_id", "at", "kind", "user_id"))
        audits_before = OldAudit.objects.count()
        last_audit = OldAudit.objects.order_by("id").last().pk

        _migrate(AFTER)
        unmarked = AuditEvent.objects.filter(kind="").order_by("at")  # what no RequestEvent was written beside
        assert list(unmarked.values_list("action", flat=True)) == ["create draft", "retry (API)"]
        assert [(e["who"], e["what"], e["detail"].split("\n")[0], e["at"] - t) for e in history_of(first)] == [
            ("ann", "create draft", "", timedelta(0)),
            ("dbmail_cron", "expansion failed", "set failed", timedelta(minutes=1)),
            ("ann", "retried", "retry: expansion resumes after position 199", timedelta(minutes=2)),
            ("ann", "retry (API)", "", timedelta(minutes=2, milliseconds=5)),
            ("ann", "cancel", "4 email(s) stopped before sending", timedelta(minutes=3, milliseconds=300)),
        ]
        assert "Traceback (most recent call last):\n  x" in history_of(first)[1]["detail"]  # kept whole
        assert [(e["who"], e["what"], e["kind"]) for e in history_of(second)] == [
            ("dbmail_track (reputation guard)", "paused by the reputation guard", "pause"),
            ("bob", "resume", "resume"),
            ("bob", "cancelled by hand", "cancel"),
        ]
        copied = AuditEvent.objects.exclude(kind="").order_by("at", "id")
        assert sorted((e.request_id, e.kind, e.actor_id) for e in copied) == sorted(_what(r) for r in original)
        assert all(e.target_type == "dbmail.messagerequest" and e.target_id == str(e.request_id) for e in copied)
        assert AuditEvent.objects.get(kind="pause").target == f"#{second.pk} Second"
        copies = list(AuditEvent.objects.filter(pk__gt=last_audit).order_by("at", "id"))
        assert len(copies) == 4 and [e.pk for e in copies] == sorted(e.pk for e in copies)  # in the events' order

        old = _migrate(BEFORE)  # back: every RequestEvent again, and only the copies leave the audit
        RequestEvent, OldAudit = old.get_model("dbmail", "RequestEvent"), old.get_model("dbmail", "AuditEvent")
        restored = sorted(RequestEvent.objects.values_list("request_id", "at", "kind", "user_id"))
        assert sorted(_what(r) for r in restored) == sorted(_what(r) for r in original)
        twins = {(first.pk, "cancel"), (second.pk, "resume")}  # these take their audit twin's time
        assert {r for r in restored if r[::2] not in twins} == {r for r in original if r[::2] not in twins}
        assert OldAudit.objects.count() == audits_before
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def _what(row):
    """(request, kind, user) of a (request, at, kind, user) row."""
    return row[0], row[2], row[3]


# --- each writer: one event per step, whichever screen asked ---


def _events(mail):
    return list(AuditEvent.objects.filter(request=mail).order_by("at", "id"))


@pytest.mark.django_db
def test_a_cancel_leaves_one_event_from_the_panel_the_admin_the_api_and_the_model(panel, admin_client):
    ann = composer("ann")
    mails = [MessageRequestFactory(status=R.EXPANDED, creator=ann) for _ in range(4)]
    for mail in mails:
        TextOfEmailFactory.create_batch(2, request=mail, account=mail.sender, status="queued")
    panel.post(reverse("commpanel:cancel", args=[mails[0].pk]))
    admin_client.post(
        reverse("admin:dbmail_messagerequest_changelist"),
        {"action": "cancel_requests", "_selected_action": [mails[1].pk]},
    )
    assert client_for(ann).post(f"/api/v1/requests/{mails[2].pk}/cancel/").json()["cancelled_emails"] == 2
    mails[3].cancel()  # from a Django shell: no user, and in the history all the same
    assert mails[3].cancel() == 0  # once cancelled, nothing more happens, nor is recorded
    seen = [[(e.actor_name, e.action, e.kind, e.detail) for e in _events(mail)] for mail in mails]
    assert seen[0] == [("editor", "cancel", "cancel", "2 email(s) stopped before sending")]
    assert seen[1] == [("admin", "cancel (admin)", "cancel", "2 email(s) stopped before sending")]
    assert seen[2] == [("ann", "cancel (API)", "cancel", "2 email(s) stopped before sending")]
    assert seen[3] == [("shell", "cancel", "cancel", "2 email(s) stopped before sending")]
    assert MessageRequest.objects.filter(status=R.CANCELLED).count() == 4
    assert _events(mails[3])[0].actor is None
    assert [(e["who"], e["what"]) for e in history_of(mails[3])] == [("shell", "cancel")]  # the request page's


@pytest.mark.django_db
def test_a_draft_discarded_in_the_panel_is_one_event(panel, editor):
    draft = MessageRequestFactory(status=R.DRAFT, creator=editor)
    panel.post(reverse("commpanel:cancel", args=[draft.pk]))
    assert [(e.action, e.kind, e.detail) for e in _events(draft)] == [("discard draft", "cancel", "")]
    other = MessageRequestFactory(status=R.DRAFT, creator=editor)
    other.cancel()
    assert [(e.actor_name, e.action, e.kind) for e in _events(other)] == [("shell", "discard draft", "cancel")]


@pytest.mark.django_db
def test_a_failure_a_retry_a_pause_and_a_resume_each_write_one_event(panel, editor, admin_client):
    mail = MessageRequestFactory(status=R.EXPANDING, expand_token=uuid.uuid4(), recipient_set="all_active")
    held = MessageRequest.objects.get(pk=mail.pk)
    assert expand.fail(held, "set failed", "Traceback ...") and not expand.fail(held, "again")
    mail = MessageRequest.objects.get(pk=mail.pk)
    failed = _events(mail)
    assert [(e.actor_name, e.action, e.kind, e.actor) for e in failed] == [
        ("dbmail_cron", "expansion failed", "failure", None)
    ]
    assert failed[0].detail == "set failed\n\nTraceback ..." and failed[0].at == mail.failed_at
    for _ in range(2):  # the second finds it queued: nothing more
        admin_client.post(
            reverse("admin:dbmail_messagerequest_changelist"), {"action": "retry_failed", "_selected_action": [mail.pk]}
        )
    assert MessageRequest.objects.get(pk=mail.pk).status == R.QUEUED
    assert [(e.actor_name, e.action, e.kind) for e in _events(mail)[1:]] == [("admin", "retry (admin)", "retry")]

    paused = MessageRequestFactory(status=R.EXPANDED)
    assert guard.pause(paused, "too many bounces") and not guard.pause(paused, "again")
    panel.post(reverse("commpanel:resume", args=[paused.pk]))
    panel.post(reverse("commpanel:resume", args=[paused.pk]))  # not paused any more: nothing
    assert [(e.actor_name, e.action, e.kind, e.detail[:16]) for e in _events(paused)] == [
        ("dbmail_track (reputation guard)", "paused by the reputation guard", "pause", "too many bounces"),
        ("editor", "resume", "resume", "resumed; the gua"),
    ]


@pytest.mark.django_db
def test_the_request_page_shows_the_history_once_with_who_and_why(panel, editor):
    mail = MessageRequestFactory(status=R.EXPANDED)
    TextOfEmailFactory(request=mail, account=mail.sender, status="queued")
    guard.pause(mail, "26 of 500 emails sent bounced hard")
    panel.post(reverse("commpanel:resume", args=[mail.pk]))
    panel.post(reverse("commpanel:cancel", args=[mail.pk]))
    page = panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    history = page[page.index('id="history"') :]
    order = ["dbmail_track (reputation guard)", "26 of 500 emails sent bounced hard", ">resume<", ">cancel<"]
    assert [history.index(words) for words in order] == sorted(history.index(words) for words in order)
    assert history.count(">resume<") == 1 and history.count(">cancel<") == 1
    assert history.count("<td>editor</td>") == 2


# --- append-only ---


@pytest.mark.django_db(transaction=True)
def test_nothing_updates_or_deletes_an_event_but_a_deleted_users_or_drafts_set_null():
    user = UserFactory(username="gone")
    draft = MessageRequestFactory(status=R.DRAFT)
    event = audit.record(user, "create draft", draft)
    automatic = audit.record(None, "expansion failed", draft, detail="x", kind=AuditEvent.Kind.FAILURE, by=audit.CRON)
    event.detail = "nothing happened"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(detail="rewritten")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.bulk_update([automatic], ["detail"])
    for sql in (
        "UPDATE dbmail_auditevent SET detail = 'rewritten'",
        "UPDATE dbmail_auditevent SET actor_name = 'someone else', actor_id = NULL",
        "UPDATE dbmail_auditevent SET request_id = NULL, at = now()",
        f"UPDATE dbmail_auditevent SET request_id = {draft.pk + 1000}",
        "DELETE FROM dbmail_auditevent",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert AuditEvent._base_manager.count() == 2
    assert AuditEvent.objects.get(pk=event.pk).detail == "" and AuditEvent.objects.get(pk=automatic.pk).detail == "x"

    user.delete()  # the foreign keys' SET NULL is the one change let through; the names stay
    MessageRequest.objects.get(pk=draft.pk).delete()
    kept = AuditEvent.objects.get(pk=event.pk)
    assert (kept.actor_id, kept.request_id, kept.actor_name, kept.action) == (None, None, "gone", "create draft")
    assert AuditEvent.objects.get(pk=automatic.pk).request_id is None
