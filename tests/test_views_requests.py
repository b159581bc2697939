"""The request pages: list, preview, test, send/schedule, progress, cancel, retry, reuse."""

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from dbmail.intake import expand
from dbmail.models import MessageRequest, RequestAttachment, RequestEvent, SenderAccount, TextOfEmail

from . import poison
from .factories import GroupFactory, MessageRequestFactory, TextOfEmailFactory, UserFactory

pytestmark = pytest.mark.django_db
Status = MessageRequest.Status


def rows_request(**kwargs):
    rows = [
        {"email": "ann@example.org", "first_name": "Ann", "balance": "12"},
        {"email": "bob@example.org", "first_name": "Bob", "balance": ""},
        {"email": "cy@example.org", "first_name": "Cy", "balance": "7"},
    ]
    defaults = dict(
        status=Status.DRAFT,
        subject="Hi {{ first_name }}",
        text_body="Balance: {{ balance }}\n",
        html_body="<p>Balance <b>{{ balance }}</b></p>",
        recipient_set="addresses",
        recipient_params={
            "source": "csv",
            "filename": "x.csv",
            "columns": ["email", "first_name", "balance"],
            "rows": rows,
        },
    )
    defaults.update(kwargs)
    return MessageRequestFactory(**defaults)


def test_draft_page_shows_count_warnings_and_first_preview(panel):
    mail = rows_request()
    response = panel.get(reverse("commpanel:request", args=[mail.pk]))
    summary = response.context["summary"]
    assert summary.count == 3
    assert summary.empty["balance"]["examples"] == ["bob@example.org"]
    preview = response.context["preview"]
    assert preview.email.subject == "Hi Ann"
    assert preview.email.to_address == "ann@example.org"
    html = response.content.decode()
    assert "would get an empty <code>balance</code>" in html
    assert 'sandbox title="HTML preview" srcdoc="&lt;p&gt;Balance &lt;b&gt;12&lt;/b&gt;&lt;/p&gt;"' in html


def test_preview_is_what_expansion_makes(panel):
    mail = rows_request()
    response = panel.get(reverse("commpanel:request", args=[mail.pk]) + "?i=1")
    shown = response.context["preview"].email
    assert response.context["preview"].has_next
    MessageRequest.objects.filter(pk=mail.pk).update(status=Status.QUEUED)
    expand.expand(expand.claim_request())
    made = mail.emails.get(to_address="bob@example.org")
    assert (shown.subject, shown.text, shown.html) == (made.subject, made.text, made.html)
    assert shown.headers.keys() == made.headers.keys()


def test_preview_search_finds_a_recipient(panel):
    mail = rows_request()
    response = panel.get(reverse("commpanel:request", args=[mail.pk]) + "?rcpt=CY@")
    assert response.context["preview"].email.subject == "Hi Cy"
    assert response.context["preview"].index == 2
    assert not response.context["preview"].has_next
    response = panel.get(reverse("commpanel:request", args=[mail.pk]) + "?rcpt=nobody")
    assert response.context["preview"] is None


def test_send_now_queues_the_draft(panel):
    mail = rows_request()
    before = timezone.now()
    panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "now"})
    mail.refresh_from_db()
    assert mail.status == Status.QUEUED
    assert before <= mail.send_at <= timezone.now()
    assert expand.claim_request().pk == mail.pk


def test_schedule_sets_send_at_and_waits(panel, settings):
    mail = rows_request()
    response = panel.post(
        reverse("commpanel:send", args=[mail.pk]), {"when": "later", "send_at": "2099-05-01T08:30"}, follow=True
    )
    mail.refresh_from_db()
    assert mail.status == Status.QUEUED
    assert mail.send_at.isoformat() == "2099-05-01T08:30:00+00:00"
    assert "Scheduled for 2099-05-01 08:30" in response.content.decode()
    assert 'id="request-status">Scheduled</span>' in response.content.decode()
    assert expand.claim_request() is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"when": "later", "send_at": "2001-01-01T00:00"}, "This time has passed"),
        ({"when": "later", "send_at": ""}, "Choose when to send it."),
    ],
)
def test_bad_schedule_is_refused(panel, data, message):
    mail = rows_request()
    response = panel.post(reverse("commpanel:send", args=[mail.pk]), data, follow=True)
    mail.refresh_from_db()
    assert mail.status == Status.DRAFT
    assert message in response.content.decode()


def test_a_draft_that_became_invalid_is_not_queued(panel):
    mail = rows_request()
    mail.sender.active = False
    mail.sender.save()
    response = panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "now"}, follow=True)
    mail.refresh_from_db()
    assert mail.status == Status.DRAFT
    assert "This sender account is not active." in response.content.decode()


def test_sending_twice_does_not_requeue(panel):
    mail = rows_request(status=Status.EXPANDED)
    panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "now"})
    mail.refresh_from_db()
    assert mail.status == Status.EXPANDED


def test_public_request_gets_an_unguessable_web_version_without_recipient_data(panel, client):
    mail = rows_request(public=True, subject="News {{ first_name }}", text_body="Hello {{ first_name }} {{ email }}.")
    panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "now"})
    mail.refresh_from_db()
    assert mail.public_id
    page = client.get(reverse("dbmail:web_version", args=[mail.public_id]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "Balance" in text and "ann@example.org" not in text and "Ann" not in text
    mail.public = False
    mail.save()
    assert client.get(reverse("dbmail:web_version", args=[mail.public_id])).status_code == 404


# Transactional, like production: the ad-hoc send runs when the view's writes commit.
@pytest.mark.django_db(transaction=True)
def test_test_send_goes_to_me_now_with_prefix_and_attachments(panel, editor, smtp_server, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    mail = rows_request()
    RequestAttachment.objects.create(
        request=mail,
        file=ContentFile(b"PDFDATA", name="plan.pdf"),
        filename="plan.pdf",
        content_type="application/pdf",
        size=7,
    )
    url = reverse("commpanel:test", args=[mail.pk])
    response = panel.post(url, {"i": "2"})
    assert response["Location"].endswith("?i=2")
    page = panel.get(response["Location"])
    assert "Test sent to editor@example.org as cy@example.org would get it." in page.content.decode()
    [received] = smtp_server.received
    assert received.rcpt_tos == ["editor@example.org"]
    message = received.message
    assert message["Subject"] == "[TEST] Hi Cy"
    assert "unsubscribe" in message["List-Unsubscribe"]
    parts = {p.get_filename(): p.get_content() for p in message.iter_attachments()}
    assert parts == {"plan.pdf": b"PDFDATA"}
    email = TextOfEmail.objects.get(to_address="editor@example.org")
    assert email.request is None and email.status == TextOfEmail.Status.SENT
    assert not mail.emails.exists()


def test_test_send_without_my_address_is_refused(panel, editor):
    editor.email = ""
    editor.save()
    mail = rows_request()
    response = panel.post(reverse("commpanel:test", args=[mail.pk]), {"i": "0"}, follow=True)
    assert "has no email address" in response.content.decode()
    assert not TextOfEmail.objects.exists()


def expanded_request(statuses):
    mail = rows_request(status=Status.EXPANDED)
    for i, status in enumerate(statuses):
        TextOfEmailFactory(
            request=mail,
            to_address=f"r{i}@example.org",
            status=status,
            last_error="550 no" if status == "dropped" else "",
        )
    return mail


def test_status_json_reports_progress(panel):
    mail = expanded_request(["sent", "sent", "queued", "dropped"])
    data = panel.get(reverse("commpanel:status", args=[mail.pk])).json()
    assert data["counts"] == {"queued": 1, "sent": 2, "dropped": 1}
    assert (data["total"], data["done"], data["percent"]) == (4, 3, 75)
    assert data["active"] and data["cancellable"] and data["retryable"]
    TextOfEmail.objects.filter(status="queued").update(status="sent")
    data = panel.get(reverse("commpanel:status", args=[mail.pk])).json()
    assert data["percent"] == 100 and not data["active"] and not data["cancellable"]


def test_request_page_lists_emails_with_filter_and_search(panel):
    mail = expanded_request(["sent", "dropped", "queued"])
    url = reverse("commpanel:request", args=[mail.pk])
    page = panel.get(url + "?status=dropped")
    assert [e.to_address for e in page.context["emails"]] == ["r1@example.org"]
    assert "550 no" in page.content.decode()
    page = panel.get(url + "?address=r2@")
    assert [e.to_address for e in page.context["emails"]] == ["r2@example.org"]


def test_cancel_stops_the_unsent_rest(panel):
    mail = expanded_request(["sent", "queued", "deferred"])
    response = panel.post(reverse("commpanel:cancel", args=[mail.pk]), follow=True)
    mail.refresh_from_db()
    assert mail.status == Status.CANCELLED
    assert mail.status_counts() == {"sent": 1, "cancelled": 2}
    assert "2 unsent email(s) will not go out" in response.content.decode()


def test_cancel_a_scheduled_request_before_expansion(panel):
    mail = rows_request(status=Status.QUEUED, send_at=timezone.now() + timedelta(days=1))
    panel.post(reverse("commpanel:cancel", args=[mail.pk]))
    mail.refresh_from_db()
    assert mail.status == Status.CANCELLED
    mail.send_at = timezone.now()
    mail.save()
    assert expand.claim_request() is None


def test_retry_requeues_dropped_and_deferred(panel):
    mail = expanded_request(["sent", "dropped", "deferred"])
    panel.post(reverse("commpanel:retry", args=[mail.pk]))
    assert mail.status_counts() == {"sent": 1, "queued": 2}


def test_reuse_makes_a_new_draft_with_attachments(panel, editor, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    mail = expanded_request(["sent"])
    RequestAttachment.objects.create(request=mail, file=ContentFile(b"abc", name="a.txt"), filename="a.txt", size=3)
    response = panel.post(reverse("commpanel:reuse", args=[mail.pk]))
    copy = MessageRequest.objects.exclude(pk=mail.pk).get()
    assert response["Location"] == reverse("commpanel:edit", args=[copy.pk])
    assert copy.status == Status.DRAFT and copy.creator == editor
    assert (copy.subject, copy.recipient_params) == (mail.subject, mail.recipient_params)
    copied = copy.attachments.get()
    assert copied.file.name != mail.attachments.get().file.name
    assert copied.file.read() == b"abc"


def test_list_is_newest_first_searchable_paginated_with_progress(panel, editor, settings):
    settings.DBMAIL_PANEL_PAGE_SIZE = 2
    old = expanded_request(["sent", "queued"])
    old.created_at = timezone.now() - timedelta(days=1)
    old.save()
    newer = [rows_request(subject=f"Letter {i}", creator=editor) for i in range(2)]
    page = panel.get(reverse("commpanel:requests"))
    assert [m.pk for m in page.context["rows"]] == [newer[1].pk, newer[0].pk]
    page = panel.get(reverse("commpanel:requests") + "?page=2")
    [row] = page.context["rows"]
    assert row.pk == old.pk and row.progress["counts"] == {"queued": 1, "sent": 1}
    page = panel.get(reverse("commpanel:requests") + "?q=letter 1")
    assert [m.pk for m in page.context["rows"]] == [newer[1].pk]
    page = panel.get(reverse("commpanel:requests") + "?q=editor")
    assert {m.pk for m in page.context["rows"]} == {n.pk for n in newer}


def test_group_request_preview_uses_user_names(panel):
    group = GroupFactory(name="Teachers")
    UserFactory(username="t1", first_name="Tess", groups=[group])
    mail = rows_request(recipient_set="groups", recipient_params={"groups": ["Teachers"]})
    response = panel.get(reverse("commpanel:request", args=[mail.pk]))
    assert response.context["preview"].email.subject == "Hi Tess"
    assert response.context["recipients_label"] == "Users in groups: Teachers"


def test_web_version_waits_for_the_send_time_and_escapes_html(panel, client):
    mail = rows_request(
        public=True,
        status=Status.QUEUED,
        send_at=timezone.now() + timedelta(hours=1),
        html_body='<p title="x">{{ first_name }}</p>"><script>alert(1)</script>',
    )
    assert mail.public_id
    url = reverse("dbmail:web_version", args=[mail.public_id])
    assert client.get(url).status_code == 404
    MessageRequest.objects.filter(pk=mail.pk).update(send_at=timezone.now())
    html = client.get(url).content.decode()
    assert 'srcdoc="&lt;p title=&quot;x&quot;&gt;&lt;/p&gt;&quot;&gt;&lt;script&gt;' in html
    assert "<script>alert" not in html


@pytest.mark.django_db(transaction=True)
def test_test_send_while_the_server_is_down_stays_queued_and_says_so(panel, settings):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens
    mail = rows_request()
    response = panel.post(reverse("commpanel:test", args=[mail.pk]), {"i": "0"}, follow=True)
    email = TextOfEmail.objects.get(to_address="editor@example.org")
    assert email.status == TextOfEmail.Status.QUEUED
    assert "cannot connect" in email.events.get().text  # it was tried, and kept for cron
    assert "the next dbmail_cron run sends it" in response.content.decode()


def test_each_email_has_a_history_page_with_attempts_and_tracking_events(panel, client):
    from dbmail.models import DeliveryEvent

    mail = expanded_request(["sent"])
    email = mail.emails.get()
    DeliveryEvent.objects.create(email=email, kind="attempt", outcome="sent", smtp_code=250, text="Ok: queued as Q1")
    DeliveryEvent.objects.create(email=email, kind="tracking", outcome="delivered", text="[e1] delivered from postfix")
    url = reverse("commpanel:email", args=[mail.pk, email.pk])
    page = panel.get(url).content.decode()
    assert "queued as Q1" in page and "delivered from postfix" in page
    assert page.index("queued as Q1") < page.index("delivered from postfix")  # oldest first
    assert url in panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    other = MessageRequestFactory(status="expanded")
    assert panel.get(reverse("commpanel:email", args=[other.pk, email.pk])).status_code == 404
    assert client.get(url).status_code == 302  # anonymous: to the login page


# --- Failed and held requests (issue 11, points 1 and 10) -----------------------------------


@pytest.mark.parametrize("kind", sorted(poison.POISONS))
@pytest.mark.parametrize("status", [Status.QUEUED, Status.DRAFT])
def test_a_poisoned_request_page_answers_200_before_and_after_it_failed(panel, kind, status):
    fields, words = poison.POISONS[kind]
    mail = MessageRequestFactory(status=status, **fields)
    url = reverse("commpanel:request", args=[mail.pk])
    assert panel.get(url).status_code == 200
    assert panel.get(reverse("commpanel:requests")).status_code == 200
    if status == Status.DRAFT:
        return
    expand.expand_due()
    page = panel.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="failure"' in html and "Expansion failed" in html and 'id="resume"' in html
    from django.utils.html import escape

    assert escape(words) in html
    assert panel.get(reverse("commpanel:status", args=[mail.pk])).json()["status"] == "failed"
    assert ">Failed<" in panel.get(reverse("commpanel:requests")).content.decode()


def test_retry_button_queues_a_failed_request_again_and_records_who(panel, editor):
    poison.BROKEN["on"] = True
    mail = MessageRequestFactory(recipient_set="test_explodes")
    expand.expand_due()
    try:
        poison.BROKEN["on"] = False
        response = panel.post(reverse("commpanel:resume", args=[mail.pk]), follow=True)
    finally:
        poison.BROKEN["on"] = True
    assert "Queued again" in response.content.decode()
    mail.refresh_from_db()
    assert mail.status == Status.QUEUED and mail.failure == ""
    retried = mail.events.get(kind="retry")
    assert retried.user == editor
    html = response.content.decode()
    assert 'id="history"' in html and f"by {editor.username}" in html and "the directory server is offline" in html


def test_retry_is_refused_while_the_recipient_set_is_still_missing(panel):
    mail = MessageRequestFactory(recipient_set="retired_set")
    expand.expand_due()
    response = panel.post(reverse("commpanel:resume", args=[mail.pk]), follow=True)
    assert "Not retried: it would fail again: No recipient set named" in response.content.decode()
    assert MessageRequest.objects.get(pk=mail.pk).status == Status.FAILED
    panel.post(reverse("commpanel:resume", args=[expanded_request(["sent"]).pk]))  # not failed: nothing happens
    assert not RequestEvent.objects.filter(kind="retry").exists()


def test_a_failed_request_can_be_cancelled(panel, editor):
    mail = MessageRequestFactory(recipient_set="retired_set")
    expand.expand_due()
    assert panel.get(reverse("commpanel:status", args=[mail.pk])).json()["cancellable"]
    panel.post(reverse("commpanel:cancel", args=[mail.pk]))
    assert MessageRequest.objects.get(pk=mail.pk).status == Status.CANCELLED
    assert mail.events.get(kind="cancel").user == editor


def test_mail_of_an_inactive_sender_shows_as_held(panel):
    mail = expanded_request(["queued", "deferred", "sent"])
    SenderAccount.objects.filter(pk=mail.sender_id).update(active=False)
    data = panel.get(reverse("commpanel:status", args=[mail.pk])).json()
    assert data["counts"] == {"held": 2, "sent": 1} and data["cancellable"]
    page = panel.get(reverse("commpanel:request", args=[mail.pk]) + "?status=held")
    assert [e.to_address for e in page.context["emails"]] == ["r0@example.org", "r1@example.org"]
    listing = panel.get(reverse("commpanel:requests")).content.decode()
    assert "held <b>2</b>" in listing
    queued = MessageRequestFactory(recipient_set="all_active")
    page = panel.get(reverse("commpanel:request", args=[queued.pk])).content.decode()
    assert 'id="held"' in page and ">Held<" in page
