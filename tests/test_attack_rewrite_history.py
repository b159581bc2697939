"""Attack (issue 12, 7): a staff user rewrites the delivery history in the admin.

As a staff user WITHOUT superuser rights but holding every model permission
of dbmail and mailgate (add, change, delete, view), through the test client:
a sent email's status, body and attempts cannot be changed, delivery events
cannot be added, changed or deleted, a sent request cannot be edited or
deleted; what may be done is done by actions, and every action leaves who and
when (an AuditEvent, and for an email a DeliveryEvent naming the actor),
which the comm panel's request and email pages show.
"""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from dbmail import states
from dbmail.models import AuditEvent, DeliveryEvent, MessageRequest, SenderAccount, Suppression, TextOfEmail
from mailgate.models import InboundMessage

from .factories import EmailListFactory, MessageRequestFactory, TextOfEmailFactory, UserFactory, mail_fixture

pytestmark = pytest.mark.django_db
E, R = states.EmailStatus, states.RequestStatus


@pytest.fixture
def staff(db):
    user = UserFactory(username="mallory", email="mallory@example.org", is_staff=True, is_superuser=False)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label__in=["dbmail", "mailgate"]))
    return user


@pytest.fixture
def client(staff):
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def sent():
    request = MessageRequestFactory(status=R.EXPANDED, subject="Term dates")
    email = TextOfEmailFactory(request=request, status=E.SENT, text="The real text.", attempts=1)
    DeliveryEvent.objects.create(email=email, kind=DeliveryEvent.Kind.ATTEMPT, outcome=E.SENT, smtp_code=250)
    return email


def admin_url(model, action, *args, app="dbmail"):
    return reverse(f"admin:{app}_{model}_{action}", args=args)


def test_a_sent_email_cannot_be_changed_added_or_deleted(client, sent):
    page = client.get(admin_url("textofemail", "change", sent.pk))
    assert page.status_code == 200  # a view: every field read-only
    assert b'name="status"' not in page.content and b'name="text"' not in page.content
    forged = {"status": E.DELIVERED, "text": "A rewritten text.", "attempts": "0", "to_address": sent.to_address}
    assert client.post(admin_url("textofemail", "change", sent.pk), forged).status_code == 403
    assert client.post(admin_url("textofemail", "add"), forged).status_code == 403
    assert client.post(admin_url("textofemail", "delete", sent.pk), {"post": "yes"}).status_code == 403
    listing = admin_url("textofemail", "changelist")
    client.post(listing, {"action": "delete_selected", "_selected_action": [sent.pk], "post": "yes"})
    sent.refresh_from_db()
    assert (sent.status, sent.text, sent.attempts) == (E.SENT, "The real text.", 1)


def test_the_delivery_log_cannot_be_added_to_changed_or_deleted(client, sent):
    event = sent.events.get()
    fake = {"email": sent.pk, "kind": "tracking", "outcome": E.DELIVERED, "text": "delivered (not really)"}
    assert client.post(admin_url("deliveryevent", "add"), fake).status_code == 403
    assert client.post(admin_url("deliveryevent", "change", event.pk), fake).status_code == 403
    assert client.post(admin_url("deliveryevent", "delete", event.pk), {"post": "yes"}).status_code == 403
    listing = admin_url("deliveryevent", "changelist")
    client.post(listing, {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"})
    # Nor through the email's inline formset.
    inline = {
        "events-TOTAL_FORMS": "2",
        "events-INITIAL_FORMS": "1",
        "events-0-id": event.pk,
        "events-0-DELETE": "on",
        "events-1-kind": "tracking",
        "events-1-outcome": E.DELIVERED,
    }
    assert client.post(admin_url("textofemail", "change", sent.pk), inline).status_code == 403
    assert list(sent.events.values_list("pk", "outcome")) == [(event.pk, E.SENT)]


def test_a_sent_request_cannot_be_edited_or_deleted_but_a_draft_can(client, sent):
    request = sent.request
    page = client.get(admin_url("messagerequest", "change", request.pk))
    assert page.status_code == 200 and b'name="subject"' not in page.content
    client.post(admin_url("messagerequest", "change", request.pk), {"subject": "Rewritten", "text_body": "x"})
    assert client.post(admin_url("messagerequest", "delete", request.pk), {"post": "yes"}).status_code == 403
    request.refresh_from_db()
    assert request.subject == "Term dates" and TextOfEmail.objects.filter(pk=sent.pk).exists()
    draft = MessageRequestFactory(status=R.DRAFT)
    assert b'name="subject"' in client.get(admin_url("messagerequest", "change", draft.pk)).content
    assert client.post(admin_url("messagerequest", "delete", draft.pk), {"post": "yes"}).status_code == 302
    assert not MessageRequest.objects.filter(pk=draft.pk).exists()
    assert AuditEvent.objects.get(action="delete (admin)").actor_name == "mallory"


def test_admin_actions_record_who_and_when(client, staff):
    queued, dropped = TextOfEmailFactory(), TextOfEmailFactory(status=E.DROPPED)
    listing = admin_url("textofemail", "changelist")
    client.post(listing, {"action": "cancel_emails", "_selected_action": [queued.pk]})
    client.post(listing, {"action": "retry_emails", "_selected_action": [dropped.pk]})
    queued.refresh_from_db()
    dropped.refresh_from_db()
    assert (queued.status, dropped.status) == (E.CANCELLED, E.QUEUED)
    for email, outcome in ((queued, E.CANCELLED), (dropped, E.QUEUED)):
        (event,) = email.events.filter(kind=DeliveryEvent.Kind.ADMIN)
        assert (event.actor, event.actor_name, event.outcome) == (staff, "mallory", outcome)
        assert event.at is not None and "mallory" in event.text
    assert set(AuditEvent.objects.values_list("action", "actor_name")) == {("cancel", "mallory"), ("retry", "mallory")}


def test_panel_actions_record_who_and_when_and_the_pages_show_it(client, staff):
    staff.email = "mallory@example.org"
    staff.save()
    request = MessageRequestFactory(status=R.EXPANDED)
    waiting = TextOfEmailFactory(request=request, status=E.DEFERRED)
    client.post(reverse("commpanel:retry", args=[request.pk]))
    client.post(reverse("commpanel:cancel", args=[request.pk]))
    waiting.refresh_from_db()
    assert waiting.status == E.CANCELLED
    assert [(e.outcome, e.actor_name) for e in waiting.events.order_by("id")] == [
        (E.QUEUED, "mallory"),
        (E.CANCELLED, "mallory"),
    ]
    assert [a.action for a in request.audit_events.order_by("id")] == ["retry", "cancel"]
    page = client.get(reverse("commpanel:request", args=[request.pk])).content.decode()
    history = page[page.index('id="history"') :]
    assert "retry" in history and "cancel" in history and "mallory" in history
    email_page = client.get(reverse("commpanel:email", args=[request.pk, waiting.pk])).content.decode()
    assert email_page.count("mallory") >= 2


def test_scheduling_and_suppressing_in_the_panel_are_recorded(client):
    from django.utils import timezone

    draft = MessageRequestFactory(status=R.DRAFT)
    later = (timezone.localtime() + timezone.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    client.post(reverse("commpanel:send", args=[draft.pk]), {"when": "later", "send_at": later})
    draft.refresh_from_db()
    assert draft.status == R.QUEUED
    assert draft.audit_events.get().action == "schedule"
    client.post(reverse("commpanel:suppressions"), {"address": "gone@example.net", "reason": "manual", "note": "asked"})
    row = Suppression.objects.get(address="gone@example.net")
    client.post(reverse("commpanel:suppression_delete", args=[row.pk]))
    assert list(
        AuditEvent.objects.filter(target_type="dbmail.suppression").order_by("id").values_list("action", "actor_name")
    ) == [("suppress", "mallory"), ("unsuppress", "mallory")]


def test_held_posts_and_sender_accounts_record_who_and_when(client, staff, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    EmailListFactory(name="Physics", regex="physics", posting_policy="moderated", addresses="member@example.net")
    from mailgate.gate import receive as gate

    held = [gate.run(mail_fixture("plain.eml"), "physics@lists.example.org", "ann@example.com") for _ in range(2)]
    listing = admin_url("heldmessage", "changelist", app="mailgate")
    client.post(listing, {"action": "approve", "_selected_action": [held[0].inbound_id]})
    client.post(listing, {"action": "reject", "_selected_action": [held[1].inbound_id]})
    approved, rejected = (InboundMessage.objects.get(pk=r.inbound_id) for r in held)
    assert (approved.status, approved.decided_by, rejected.status, rejected.decided_by) == (
        "forwarded",
        staff,
        "rejected",
        staff,
    )
    assert set(
        AuditEvent.objects.filter(target_type="mailgate.inboundmessage").values_list("action", "actor_name")
    ) == {("approve", "mallory"), ("reject", "mallory")}
    # Nor can the stored mail itself be deleted.
    assert (
        client.post(admin_url("inboundmessage", "delete", approved.pk, app="mailgate"), {"post": "yes"}).status_code
        == 403
    )

    account = SenderAccount.objects.create(address="office@example.org", display_name="Office")
    form = {"address": "office@example.org", "display_name": "The Office", "active": "on", "smtp_password": ""}
    assert client.post(admin_url("senderaccount", "change", account.pk), form).status_code == 302
    change = AuditEvent.objects.get(target_type="dbmail.senderaccount")
    assert (change.action, change.actor, change.target_id) == ("change (admin)", staff, str(account.pk))
    assert "display_name" in change.detail.lower() or "display name" in change.detail.lower()


def test_the_audit_log_itself_cannot_be_rewritten(client, sent):
    client.post(reverse("commpanel:cancel", args=[sent.request.pk]))
    event = AuditEvent.objects.get()
    fake = {"actor_name": "someone else", "action": "nothing", "target_type": "x"}
    assert client.post(admin_url("auditevent", "add"), fake).status_code == 403
    assert client.post(admin_url("auditevent", "change", event.pk), fake).status_code == 403
    assert client.post(admin_url("auditevent", "delete", event.pk), {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert (event.actor_name, event.action) == ("mallory", "cancel")
