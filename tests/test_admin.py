import pytest
from django.urls import reverse

from dbmail.models import MessageRequest, TextOfEmail

from .factories import MessageRequestFactory, SenderAccountFactory, TextOfEmailFactory, UserFactory

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status


@pytest.fixture
def admin_client(client):
    user = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    "model",
    ["senderaccount", "messagerequest", "textofemail", "deliveryevent", "suppression", "cronheartbeat", "pacingbucket"],
)
def test_every_model_has_a_working_admin_list(admin_client, model):
    MessageRequestFactory()
    TextOfEmailFactory(to_address="find.me@example.net")
    response = admin_client.get(reverse(f"admin:dbmail_{model}_changelist"))
    assert response.status_code == 200


def test_email_search_status_filter_and_detail(admin_client):
    email = TextOfEmailFactory(to_address="find.me@example.net", status=Status.DEFERRED, last_error="451 later")
    TextOfEmailFactory(to_address="other@example.net")
    url = reverse("admin:dbmail_textofemail_changelist")
    found = admin_client.get(url, {"q": "find.me"}).content.decode()
    assert "find.me@example.net" in found and "other@example.net" not in found
    filtered = admin_client.get(url, {"status__exact": "deferred"}).content.decode()
    assert "find.me@example.net" in filtered and "other@example.net" not in filtered
    detail = admin_client.get(reverse("admin:dbmail_textofemail_change", args=[email.pk]))
    assert detail.status_code == 200


def test_retry_and_cancel_actions(admin_client):
    dropped = TextOfEmailFactory(status=Status.DROPPED)
    queued = TextOfEmailFactory()
    url = reverse("admin:dbmail_textofemail_changelist")
    admin_client.post(url, {"action": "retry_emails", "_selected_action": [dropped.pk]})
    admin_client.post(url, {"action": "cancel_emails", "_selected_action": [queued.pk]})
    dropped.refresh_from_db()
    queued.refresh_from_db()
    assert dropped.status == Status.QUEUED and queued.status == Status.CANCELLED


def test_request_cancel_action(admin_client):
    request = MessageRequestFactory(status="expanded")
    email = TextOfEmailFactory(request=request)
    admin_client.post(
        reverse("admin:dbmail_messagerequest_changelist"),
        {"action": "cancel_requests", "_selected_action": [request.pk]},
    )
    email.refresh_from_db()
    assert email.status == Status.CANCELLED


def test_sender_password_is_never_shown(admin_client):
    from .factories import SenderAccountFactory

    account = SenderAccountFactory(smtp_host="relay", smtp_password="hunter2-secret")
    page = admin_client.get(reverse("admin:dbmail_senderaccount_change", args=[account.pk])).content.decode()
    assert "hunter2-secret" not in page


def test_non_staff_get_nothing(client):
    client.force_login(UserFactory(username="plain"))
    response = client.get(reverse("admin:dbmail_textofemail_changelist"))
    assert response.status_code == 302 and "/login/" in response["Location"]


# --- XML spool ---


def test_spool_files_are_listed_read_only_with_their_items(admin_client, settings, tmp_path):
    from dbmail.intake import spool
    from dbmail.models import SpoolFile

    from .factories import SenderAccountFactory
    from .spoolfiles import drop, item, xml

    settings.DBMAIL_SPOOL_DIR = str(tmp_path)
    SenderAccountFactory(address="foo@example.com")
    drop(tmp_path, "reminders.xml", xml(item(), item(address="bad")))
    spool.intake()
    record = SpoolFile.objects.get()
    listing = admin_client.get(reverse("admin:dbmail_spoolfile_changelist")).content.decode()
    assert "reminders.xml" in listing
    detail = admin_client.get(reverse("admin:dbmail_spoolfile_change", args=[record.pk])).content.decode()
    assert "boo@hisorhermail.com" in detail and "dropped" in detail and "queued" in detail
    assert admin_client.get(reverse("admin:dbmail_spoolfile_add")).status_code == 403
    assert admin_client.post(reverse("admin:dbmail_spoolfile_change", args=[record.pk]), {}).status_code == 403


def test_queue_table_rows_are_listed_read_only_with_their_emails(admin_client):
    from dbmail.models import QueueTableItem

    email = TextOfEmailFactory(to_address="row.mail@example.net")
    link = QueueTableItem.objects.create(
        email=email, table="tbl_mails", row_id=4711, fld_time=email.created_at, written="T"
    )
    listing = admin_client.get(reverse("admin:dbmail_queuetableitem_changelist"), {"q": "4711"}).content.decode()
    assert "row.mail@example.net" in listing and "tbl_mails" in listing
    assert admin_client.get(reverse("admin:dbmail_queuetableitem_add")).status_code == 403
    detail = admin_client.get(reverse("admin:dbmail_queuetableitem_change", args=[link.pk]))
    assert detail.status_code == 200 and b'name="row_id"' not in detail.content  # shown, not editable


def test_statuses_change_only_through_the_actions_never_by_editing(admin_client):
    """A status is moved along dbmail.states; the change forms show it without a field to set it."""
    email = TextOfEmailFactory(status=Status.SENDING)
    request = MessageRequestFactory(status="expanded")
    for page in (
        admin_client.get(reverse("admin:dbmail_textofemail_change", args=[email.pk])),
        admin_client.get(reverse("admin:dbmail_messagerequest_change", args=[request.pk])),
    ):
        assert page.status_code == 200
        assert 'name="status"' not in page.content.decode()
    # A new request starts as a draft or queued, never half way through.
    add = admin_client.get(reverse("admin:dbmail_messagerequest_add")).context["adminform"].form
    assert [value for value, _ in add.fields["status"].choices] == ["draft", "queued"]
    # Saving the add page as it comes makes a draft: nothing goes out until someone queues it.
    page = admin_client.get(reverse("admin:dbmail_messagerequest_add")).content.decode()
    assert '<option value="draft" selected>' in page


def test_send_now_action_queues_drafts_and_scheduled_requests_only(admin_client):
    draft, later = MessageRequestFactory(status="draft"), MessageRequestFactory(status="queued")
    done = MessageRequestFactory(status="expanded")
    admin_client.post(
        reverse("admin:dbmail_messagerequest_changelist"),
        {"action": "queue_now", "_selected_action": [draft.pk, later.pk, done.pk]},
    )
    statuses = [r.status for r in MessageRequest.objects.filter(pk__in=[draft.pk, later.pk, done.pk]).order_by("pk")]
    assert statuses == ["queued", "queued", "expanded"]


def test_a_send_grant_records_who_made_it_and_cannot_be_rewritten(client):
    from django.contrib.auth.models import Permission

    from dbmail.models import SendGrant

    staff = UserFactory(username="granter", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["add_sendgrant", "change_sendgrant"]))
    ann = UserFactory(username="ann")
    client.force_login(staff)
    response = client.post(reverse("admin:dbmail_sendgrant_add"), {"address": "Desk@Example.org", "user": ann.pk})
    assert response.status_code == 302, response.content.decode()[:2000]
    grant = SendGrant.objects.get()
    assert (grant.address, grant.user, grant.granted_by) == ("desk@example.org", ann, staff)

    bob = UserFactory(username="bob")
    client.post(reverse("admin:dbmail_sendgrant_change", args=[grant.pk]), {"user": bob.pk, "note": "why"})
    grant.refresh_from_db()
    assert (grant.address, grant.user, grant.note) == ("desk@example.org", ann, "why")


# --- Failed and held requests (issue 11, points 1 and 10) -----------------------------------


def test_failed_requests_are_filtered_shown_with_the_reason_and_retried(admin_client):
    from dbmail.intake import expand
    from dbmail.models import MessageRequest

    from .poison import BROKEN

    bad = MessageRequestFactory(recipient_set="groups", recipient_params={"groups": 5}, subject="Broken one")
    gone = MessageRequestFactory(recipient_set="retired_set", subject="Gone one")
    MessageRequestFactory(status=MessageRequest.Status.DRAFT, subject="Fine draft")
    expand.expand_due()
    url = reverse("admin:dbmail_messagerequest_changelist")
    listed = admin_client.get(url, {"status__exact": "failed"}).content.decode()
    assert "Broken one" in listed and "Gone one" in listed and "Fine draft" not in listed
    assert "must be a list of group names" in listed  # the column

    detail = admin_client.get(reverse("admin:dbmail_messagerequest_change", args=[bad.pk])).content.decode()
    assert "must be a list of group names" in detail and 'name="failure"' not in detail  # shown, never editable
    assert "field-failed_at" in detail and "Request history" in detail  # when, and the history inline

    MessageRequest.objects.filter(pk=bad.pk).update(recipient_params={"groups": ["Teachers"]})  # the fix
    response = admin_client.post(url, {"action": "retry_failed", "_selected_action": [bad.pk, gone.pk]}, follow=True)
    text = response.content.decode()
    assert "1 failed request(s) queued again" in text and f"#{gone.pk}: No recipient set named" in text
    assert MessageRequest.objects.get(pk=bad.pk).status == MessageRequest.Status.QUEUED
    assert MessageRequest.objects.get(pk=gone.pk).status == MessageRequest.Status.FAILED
    retried = MessageRequest.objects.get(pk=bad.pk).audit_events.get(kind="retry")
    assert (retried.actor.username, retried.action) == ("root", "retry (admin)")
    assert BROKEN["on"]


def test_held_mail_has_a_filter_and_shows_as_held(admin_client):
    from dbmail.models import SenderAccount

    quiet = SenderAccount.objects.create(address="quiet@example.org", active=False)
    TextOfEmailFactory(to_address="waits@example.net", account=quiet)
    TextOfEmailFactory(to_address="goes@example.net")
    MessageRequestFactory(sender=quiet, subject="Held request")
    MessageRequestFactory(subject="Free request")
    emails = admin_client.get(reverse("admin:dbmail_textofemail_changelist"), {"held": "yes"}).content.decode()
    assert "waits@example.net" in emails and "goes@example.net" not in emails and ">held<" in emails
    others = admin_client.get(reverse("admin:dbmail_textofemail_changelist"), {"held": "no"}).content.decode()
    assert "goes@example.net" in others and "waits@example.net" not in others
    requests = admin_client.get(reverse("admin:dbmail_messagerequest_changelist"), {"held": "yes"}).content.decode()
    assert "Held request" in requests and "Free request" not in requests


def test_a_paused_request_is_resumed_by_the_admin_action_with_who(admin_client):
    from dbmail.models import AuditEvent
    from dbmail.track import guard

    mail = MessageRequestFactory(status=MessageRequest.Status.EXPANDED)
    guard.pause(mail, "too many bounces")
    page = admin_client.get(reverse("admin:dbmail_messagerequest_change", args=[mail.pk])).content.decode()
    assert "too many bounces" in page
    admin_client.post(
        reverse("admin:dbmail_messagerequest_changelist"), {"action": "resume_paused", "_selected_action": [mail.pk]}
    )
    mail.refresh_from_db()
    assert mail.status == MessageRequest.Status.EXPANDED
    resumed = AuditEvent.objects.get(request=mail, kind=AuditEvent.Kind.RESUME)
    assert (resumed.actor.username, resumed.action) == ("root", "resume (admin)")


def test_a_slowdown_can_be_lifted_and_a_daily_cap_is_shown_with_todays_count(admin_client):
    from django.utils import timezone

    from dbmail.models import PacingBucket, SenderAccount
    from dbmail.send import backoff, buckets

    buckets.push_back("gmail", 600, "421 4.7.0 try later", timezone.now())
    listing = admin_client.get(reverse("admin:dbmail_pacingbucket_changelist")).content.decode()
    assert "421 4.7.0 try later" in listing and 'field-rate_now">30' in listing  # 600 halved, recovering
    admin_client.post(
        reverse("admin:dbmail_pacingbucket_changelist"), {"action": "lift_slowdown", "_selected_action": ["gmail"]}
    )
    assert not backoff.is_slowed(PacingBucket.objects.get(name="gmail"), timezone.now())
    SenderAccount.objects.create(address="news@example.org", daily_cap=40)
    assert "0 / 40" in admin_client.get(reverse("admin:dbmail_senderaccount_changelist")).content.decode()


# What each read-only page refuses a superuser: (model, may its rows be deleted here).
READ_ONLY = [
    ("textofemail", False),
    ("deliveryevent", False),
    ("auditevent", False),
    ("unsignedmail", True),
    ("sendingproblem", True),
    ("cronheartbeat", True),  # a host's row goes once the host runs the commands no more
    ("spoolfile", True),
    ("queuetableitem", True),
    ("unmatchedtrackingevent", True),
    ("trackingqueueitem", True),
]


@pytest.mark.parametrize(("model", "deletable"), READ_ONLY)
def test_read_only_pages_refuse_even_a_superuser(admin_client, model, deletable):
    from django.apps import apps
    from django.contrib import admin

    request = admin_client.get(reverse("admin:index")).wsgi_request  # the URL patterns register the pages
    page = admin.site._registry[apps.get_model("dbmail", model)]
    assert request.user.is_superuser
    assert not page.has_add_permission(request) and not page.has_change_permission(request)
    assert page.has_view_permission(request)
    assert page.has_delete_permission(request) is deletable
    assert admin_client.get(reverse(f"admin:dbmail_{model}_add")).status_code == 403


def test_history_inlines_add_change_and_delete_nothing(admin_client):
    from django.contrib import admin

    from dbmail.admin import DeliveryEventInline, MessageRequestAdmin, RequestHistoryInline, TextOfEmailAdmin

    assert DeliveryEventInline in TextOfEmailAdmin.inlines and RequestHistoryInline in MessageRequestAdmin.inlines
    request = admin_client.get(reverse("admin:index")).wsgi_request
    for inline in (DeliveryEventInline, RequestHistoryInline):
        shown = inline(inline.model, admin.site)
        assert not shown.can_delete and shown.extra == 0
        assert not shown.has_add_permission(request, None) and not shown.has_change_permission(request)
        assert not shown.has_delete_permission(request)


def row_labels(page):
    """The labels of a change form's rows, editable or read-only."""
    fields = [field for fieldset in page.context["adminform"] for line in fieldset for field in line]
    return [f.field["label"] if isinstance(f.field, dict) else f.field.label for f in fields]


def test_a_queued_request_is_a_view_without_save_and_one_status_row(admin_client):
    from dbmail.models import AuditEvent

    mail = MessageRequestFactory(status="expanded", subject="Sent already")
    url = reverse("admin:dbmail_messagerequest_change", args=[mail.pk])
    page = admin_client.get(url)
    html = page.content.decode()
    assert page.status_code == 200 and 'name="_save"' not in html and 'name="_continue"' not in html
    rows = row_labels(page)
    assert rows.count("Status") == 1
    # A forged Save changes nothing and records nothing.
    assert admin_client.post(url, {"subject": "Rewritten"}).status_code == 403
    mail.refresh_from_db()
    assert (mail.subject, mail.status) == ("Sent already", "expanded")
    assert not AuditEvent.objects.filter(action="change (admin)").exists()
    # The actions still apply to it.
    admin_client.post(
        reverse("admin:dbmail_messagerequest_changelist"),
        {"action": "cancel_requests", "_selected_action": [mail.pk]},
    )
    mail.refresh_from_db()
    assert mail.status == "cancelled"


def test_a_draft_is_still_edited_here_with_one_status_row(admin_client):
    draft = MessageRequestFactory(status="draft", subject="Not yet")
    page = admin_client.get(reverse("admin:dbmail_messagerequest_change", args=[draft.pk]))
    assert 'name="_save"' in page.content.decode() and 'name="subject"' in page.content.decode()
    rows = row_labels(page)
    assert rows.count("Status") == 1
    add = admin_client.get(reverse("admin:dbmail_messagerequest_add"))
    assert 'name="status"' in add.content.decode()
    rows = row_labels(add)
    assert rows.count("Status") == 1


def test_adding_a_request_names_the_sets_and_warns_of_a_misspelt_variable(admin_client):
    add = admin_client.get(reverse("admin:dbmail_messagerequest_add")).content.decode()
    assert "One of: " in add and "all_active (All active users)" in add and "{&quot;groups&quot;: [" in add
    data = {
        "sender": SenderAccountFactory().pk,
        "subject": "Hi {{ frist_name }}",
        "text_body": "Hello",
        "html_body": "",
        "recipient_set": "all_active",
        "recipient_params": "{}",
        "context": "{}",
        "status": "draft",
        "body_format": "html",
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
        "send_at_0": "2026-01-01",
        "send_at_1": "00:00:00",
    }
    response = admin_client.post(reverse("admin:dbmail_messagerequest_add"), data, follow=True)
    assert MessageRequest.objects.filter(subject="Hi {{ frist_name }}").exists(), response.content.decode()[:3000]
    shown = [str(m) for m in response.context["messages"]]
    assert "Saved, but {{ frist_name }} is not a known variable: did you mean first_name?" in shown, shown
