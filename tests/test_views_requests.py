"""The request pages: list, preview, test, send/schedule, progress, cancel, retry, reuse."""

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from dbmail.intake import expand
from dbmail.models import AuditEvent, MessageRequest, RequestAttachment, SenderAccount, TextOfEmail

from . import poison
from .factories import GroupFactory, MessageRequestFactory, TextOfEmailFactory, UserFactory
from .test_views_compose import compose_data

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
    assert (
        'sandbox title="HTML preview" srcdoc="&lt;p&gt;Balance &lt;b&gt;12&lt;/b&gt;&lt;/p&gt;&lt;p class=&quot;mail-foot'
        in html
    )


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
    response = panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "now"}, follow=True)
    assert "Queued. This goes out to 3 addresses on the next sending run." in response.content.decode()
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
    html = response.content.decode()
    assert "Scheduled. This will be sent to 3 addresses on 1 May 2099 at 08:30. You can change or cancel" in html
    assert 'id="request-status">Scheduled</span>' in html
    assert "Scheduled: it goes out on 1 May 2099 at 08:30." in html
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
    # The form comes back as it was sent, to correct, not reset to "Send now".
    form = response.context["schedule_form"]
    assert form["when"].value() == "later" and form["send_at"].value() == data["send_at"]


def test_a_refused_reschedule_keeps_the_time_typed(panel):
    mail = rows_request()
    panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "later", "send_at": "2099-05-01T08:30"})
    typed = {"when": "later", "send_at": "2001-01-01T00:00"}
    response = panel.post(reverse("commpanel:reschedule", args=[mail.pk]), typed, follow=True)
    assert "This time has passed" in response.content.decode()
    assert 'value="2001-01-01T00:00"' in response.content.decode()
    # Opened afresh, the page shows the time it keeps.
    assert 'value="2099-05-01T08:30"' in panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()


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


def test_an_altered_or_unknown_web_version_link_gets_a_clear_page(panel, client, settings):
    # DEBUG as under `make run`: a bare Http404 there showed the recipient the site's URL patterns.
    settings.DEBUG = True
    mail = rows_request(public=True)
    panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "now"})
    mail.refresh_from_db()
    good = str(mail.public_id)
    altered = good[:-1] + ("0" if good[-1] != "0" else "1")
    for link in [f"/mail/{altered}/", f"/mail/{good[:20]}/", "/mail/not-a-uuid/"]:
        page = client.get(link)
        assert page.status_code == 404, link
        html = page.content.decode()
        assert "This web version is not available" in html and "use the link from the email itself" in html, link
        assert "URLconf" not in html and "MessageRequest" not in html, link
    assert client.get(f"/mail/{good}/").status_code == 200


def test_each_mail_links_its_web_version_and_the_web_version_does_not_link_itself(panel, client, settings):
    settings.DBMAIL_SITE_URL = "https://mail.example.org"
    body = "Hi {{ first_name }}.{% if web_version_url %} Online: {{ web_version_url }}{% endif %}\n"
    public = rows_request(public=True, text_body=body, html_body="")
    private = rows_request(text_body=body, html_body="", subject="Private {{ first_name }}")
    for mail in (public, private):
        panel.post(reverse("commpanel:send", args=[mail.pk]), {"when": "now"})
    expand.expand_due()
    public.refresh_from_db()
    link = f"https://mail.example.org/mail/{public.public_id}/"
    texts = list(TextOfEmail.objects.filter(request=public).values_list("text", flat=True))
    assert len(texts) == 3 and all(f"Online: {link}" in text for text in texts)
    assert not any(
        "Online" in text for text in TextOfEmail.objects.filter(request=private).values_list("text", flat=True)
    )
    page = client.get(link.removeprefix("https://mail.example.org"))
    assert page.status_code == 200 and "Online" not in page.content.decode()


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
    html = response.content.decode()
    assert "Cancelled: 2 emails will not go out. So far: 1 sent, 2 cancelled." in html
    assert "Cancelled: 1 sent, 2 cancelled." in html  # the status line
    assert "Cancel the rest" not in html


def test_cancel_a_scheduled_request_before_expansion(panel):
    mail = rows_request(status=Status.QUEUED, send_at=timezone.now() + timedelta(days=1))
    response = panel.post(reverse("commpanel:cancel", args=[mail.pk]), follow=True)
    html = response.content.decode()
    assert html.count("Cancelled: nothing was sent.") == 2  # the flash and the status line
    assert "unsent" not in html and 'id="request-status">Cancelled</span>' in html
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


def test_the_list_gives_a_send_time_only_once_one_was_chosen(panel):
    # A draft's send_at is its default (when it was made); shown, it read as if the draft were scheduled.
    later = timezone.now() + timedelta(days=3)
    rows_request(subject="Still a draft", status=MessageRequest.Status.DRAFT)
    rows_request(subject="Scheduled", status=MessageRequest.Status.QUEUED, send_at=later)
    html = panel.get(reverse("commpanel:requests")).content.decode()
    draft_row = html[html.index("Still a draft") :].split("</tr>")[0]
    scheduled_row = html[html.index("Scheduled") :].split("</tr>")[0]
    assert "not yet" in draft_row and "<time" not in draft_row.split("</td>")[-2]
    assert timezone.localtime(later).strftime("%Y-%m-%d %H:%M") in scheduled_row


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
    assert "the next sending run sends it" in response.content.decode()


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


def test_idn_addresses_are_shown_in_letters_and_found_by_either_spelling(panel):
    """A request's emails store A-labels (dbmail.content.addresses.delivery_spelling); people read the letters."""
    mail = rows_request(status=Status.QUEUED, recipient_params={"rows": ["Ann@bücher.example", "cy@example.org"]})
    expand.expand(expand.claim_request())
    email = mail.emails.get(to_address="Ann@xn--bcher-kva.example")
    url = reverse("commpanel:request", args=[mail.pk])
    for term in ("bücher", "xn--bcher", "ann@BÜCHER.example"):
        page = panel.get(url, {"address": term})
        assert [e.to_address for e in page.context["emails"]] == ["Ann@xn--bcher-kva.example"], term
    assert ">Ann@bücher.example</a>" in page.content.decode()
    assert panel.get(url, {"rcpt": "bücher"}).context["preview"].email == email
    detail = panel.get(reverse("commpanel:email", args=[mail.pk, email.pk])).content.decode()
    assert "<h1>Ann@bücher.example</h1>" in detail
    assert "&lt;Ann@xn--bcher-kva.example&gt; (Ann@bücher.example)" in detail  # what the To header carries, too


# --- The live page's JSON: states in words, one segment per outcome, the page's parts ---


def status_json(panel, mail, query=""):
    response = panel.get(reverse("commpanel:status", args=[mail.pk]) + query)
    assert response.status_code == 200
    return response.json()


def test_status_json_draws_each_outcome_as_itself_and_never_cancelled_as_sent(panel):
    mail = expanded_request(["sent"] * 3 + ["delivered", "deferred", "dropped", "bounced"] + ["cancelled"] * 3)
    data = status_json(panel, mail)
    segments = {s["key"]: s["n"] for s in data["segments"]}
    assert segments == {"sent": 4, "deferred": 1, "failed": 2, "cancelled": 3, "waiting": 0}
    assert [s["percent"] for s in data["segments"]] == [40.0, 10.0, 20.0, 30.0, 0]
    assert data["summary"] == "4 sent, 1 deferred, 2 dropped or bounced, 3 cancelled"
    assert (data["state"], data["state_label"]) == ("sending", "Sending")  # the deferred one is tried again
    assert "1 deferred email will be tried again later" in data["line"]


def test_after_a_cancel_the_words_say_sent_and_cancelled_not_finished(panel):
    mail = expanded_request(["sent"] * 49 + ["queued"])
    panel.post(reverse("commpanel:cancel", args=[mail.pk]))
    data = status_json(panel, mail)
    assert data["line"] == "Cancelled: 49 sent, 1 cancelled."
    assert (data["state_label"], data["active"], data["cancellable"]) == ("Cancelled", False, False)
    assert "finished" not in data["line"] and "Cancel the rest" not in data["html"]["actions"]


@pytest.mark.parametrize(
    "status, send_in, emails, label",
    [
        (Status.DRAFT, 0, [], "Draft"),
        (Status.QUEUED, 3600, [], "Scheduled"),
        (Status.QUEUED, -1, [], "Sending"),
        (Status.EXPANDING, -1, ["queued"], "Sending"),
        (Status.EXPANDED, -1, ["sent", "queued"], "Sending"),
        (Status.EXPANDED, -1, ["sent", "dropped"], "Done"),
        (Status.CANCELLED, -1, ["sent", "cancelled"], "Cancelled"),
    ],
)
def test_states_in_plain_words(panel, status, send_in, emails, label):
    mail = expanded_request(emails)
    MessageRequest.objects.filter(pk=mail.pk).update(status=status, send_at=timezone.now() + timedelta(seconds=send_in))
    mail.refresh_from_db()
    assert status_json(panel, mail)["state_label"] == label
    assert (
        f'id="request-status">{label}</span>'
        in panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    )
    listed = panel.get(reverse("commpanel:requests")).content.decode()
    assert f'badge-{label.lower()}">{label}</span>' in listed


def test_a_failed_request_is_called_failed():
    from dbmail.panel import progress

    mail = MessageRequest(status="failed", send_at=timezone.now())
    assert progress.label(mail, {}) == "Failed"
    assert progress.progress(mail, {"sent": 2})["line"] == "Failed: 2 sent."


def test_status_json_carries_the_emails_table_and_the_buttons_of_the_state(panel):
    mail = rows_request(status=Status.EXPANDING)
    data = status_json(panel, mail)
    assert "No emails yet: they are being made." in data["html"]["emails"]
    TextOfEmailFactory(request=mail, to_address="zed@example.org", status="queued")
    TextOfEmailFactory(request=mail, to_address="amy@example.org", status="sent")
    data = status_json(panel, mail)
    assert data["html"]["emails"].index("amy@example.org") < data["html"]["emails"].index("zed@example.org")
    assert "Cancel the rest" in data["html"]["actions"] and "csrfmiddlewaretoken" in data["html"]["actions"]
    assert "sent" in status_json(panel, mail, "?status=sent")["html"]["emails"]
    assert "zed@" not in status_json(panel, mail, "?status=sent")["html"]["emails"]  # the page's filter is kept
    MessageRequest.objects.filter(pk=mail.pk).update(status=Status.EXPANDED)
    TextOfEmail.objects.filter(to_address="zed@example.org").update(status="sent")
    data = status_json(panel, mail)
    assert (data["percent"], data["state_label"], data["active"]) == (100, "Done", False)
    assert "Cancel the rest" not in data["html"]["actions"] and "Reuse as new request" in data["html"]["actions"]


def test_rate_and_eta_while_sending(panel):
    mail = expanded_request(["sent"] * 30 + ["queued"] * 60)
    MessageRequest.objects.filter(pk=mail.pk).update(expanded_at=timezone.now() - timedelta(seconds=60))
    data = status_json(panel, mail)
    assert 29 <= data["per_minute"] <= 30.1 and 119 <= data["eta_seconds"] <= 122
    assert data["pace"] in ("30 a minute, about 2 minutes left", "29 a minute, about 2 minutes left")
    assert data["line"] == "Sending: 30 of 90 handled (30 sent, 60 waiting)."


def test_the_delivery_figures_and_rates_come_from_the_roll_up(panel):
    from dbmail import rollup

    mail = expanded_request(["delivered"] * 3 + ["bounced"])
    day = timezone.localdate()
    rollup.count([(day, mail.sender_id, mail.pk, "sent")] * 4 + [(day, mail.sender_id, mail.pk, "delivered")] * 3)
    rollup.count([(day, mail.sender_id, mail.pk, "bounced"), (day, mail.sender_id, mail.pk, "hard_bounced")])
    data = status_json(panel, mail)
    assert data["delivery"]["counts"]["sent"] == 4 and data["delivery"]["rates"]["delivered"] == 75.0
    page = panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    assert '<dd data-measure="bounced">1 <span class="rate">25.0 %</span>' in page
    assert '<dt>Hard bounced</dt><dd data-measure="hard_bounced">1 <span class="rate">25.0 %</span>' in page
    listed = panel.get(reverse("commpanel:requests"))
    row = listed.context["rows"][0]
    assert row.delivery["counts"]["delivered"] == 3 and row.delivery["rates"]["bounced"] == 25.0
    assert (
        row.delivery["counts"]["hard_bounced"] == 1
        and '<div class="muted" data-measure="hard_bounced">1 hard</div>' in listed.content.decode()
    )


def test_search_by_hash_id(panel):
    wanted = rows_request(subject="Spring")
    rows_request(subject="Other")
    for query in (f"#{wanted.pk}", f"{wanted.pk}", f"# {wanted.pk}"):
        page = panel.get(reverse("commpanel:requests"), {"q": query})
        assert [m.pk for m in page.context["rows"]] == [wanted.pk], query


# --- Scheduled requests can change until expansion starts ---


def scheduled(**kwargs):
    return rows_request(status=Status.QUEUED, send_at=timezone.now() + timedelta(days=2), **kwargs)


def test_a_scheduled_request_says_what_will_happen_and_offers_edit_and_reschedule(panel):
    mail = scheduled()
    MessageRequest.objects.filter(pk=mail.pk).update(send_at="2099-12-03T09:00:00Z")
    html = panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    assert "This will be sent to 3 addresses on 3 Dec 2099 at 09:00." in html
    assert 'id="reschedule-form"' in html and reverse("commpanel:edit", args=[mail.pk]) in html
    assert "Cancel the send" in html and "Nothing will be sent." in html


def test_reschedule_moves_the_time_and_says_when(panel):
    mail = scheduled()
    response = panel.post(
        reverse("commpanel:reschedule", args=[mail.pk]), {"when": "later", "send_at": "2099-12-03T09:00"}, follow=True
    )
    mail.refresh_from_db()
    assert mail.send_at.isoformat() == "2099-12-03T09:00:00+00:00" and mail.status == Status.QUEUED
    assert "Rescheduled. This will be sent to 3 addresses on 3 Dec 2099 at 09:00." in response.content.decode()
    response = panel.post(reverse("commpanel:reschedule", args=[mail.pk]), {"when": "now"}, follow=True)
    assert "Rescheduled. This goes out to 3 addresses on the next sending run." in response.content.decode()
    assert expand.claim_request().pk == mail.pk


def test_reschedule_to_the_past_is_refused(panel):
    mail = scheduled()
    before = mail.send_at
    response = panel.post(
        reverse("commpanel:reschedule", args=[mail.pk]), {"when": "later", "send_at": "2001-01-01T00:00"}, follow=True
    )
    mail.refresh_from_db()
    assert mail.send_at == before and "This time has passed" in response.content.decode()


@pytest.mark.parametrize("status", [Status.EXPANDING, Status.EXPANDED, Status.CANCELLED, Status.DRAFT])
def test_reschedule_changes_nothing_once_expansion_started(panel, status):
    mail = scheduled()
    MessageRequest.objects.filter(pk=mail.pk).update(status=status)
    before = mail.send_at
    response = panel.post(reverse("commpanel:reschedule", args=[mail.pk]), {"when": "now"}, follow=True)
    mail.refresh_from_db()
    assert (mail.status, mail.send_at) == (status, before)
    assert "Too late to change it" in response.content.decode() or "Not changed" in response.content.decode()


def test_editing_a_scheduled_request_keeps_it_scheduled(panel):
    mail = scheduled()
    edit = panel.get(reverse("commpanel:edit", args=[mail.pk]))
    assert edit.status_code == 200 and "Edit scheduled request" in edit.content.decode()
    data = {**edit.context["form"].initial, "subject": "Changed {{ first_name }}", "source": "paste"}
    data.update(addresses="ann@example.org\nbob@example.org", sender=mail.sender_id, public="")
    data = {k: v for k, v in data.items() if v is not None and k != "public"}
    response = panel.post(reverse("commpanel:edit", args=[mail.pk]), data, follow=True)
    mail.refresh_from_db()
    assert (mail.subject, mail.status) == ("Changed {{ first_name }}", Status.QUEUED)
    assert "Changes saved. This will be sent to 2 addresses on" in response.content.decode()


@pytest.mark.parametrize("when", ["before the post", "while the form is checked"])
def test_an_edit_saved_after_expansion_started_is_refused_and_changes_nothing(panel, monkeypatch, when):
    from dbmail.panel.forms import ComposeForm

    mail = scheduled()
    edit = panel.get(reverse("commpanel:edit", args=[mail.pk]))
    data = {**edit.context["form"].initial, "subject": "Too late", "source": "paste", "addresses": "ann@example.org"}
    data = {k: v for k, v in data.items() if v is not None and k != "public"}

    def taken():  # the cron claims the request
        MessageRequest.objects.filter(pk=mail.pk).update(status=Status.EXPANDING)

    if when == "before the post":
        taken()
    else:  # between the view's first status check and the save: only the locked re-read sees it
        checked = ComposeForm.is_valid
        monkeypatch.setattr(ComposeForm, "is_valid", lambda form: (checked(form), taken())[0])
    response = panel.post(reverse("commpanel:edit", args=[mail.pk]), data, follow=True)
    mail.refresh_from_db()
    assert mail.subject == "Hi {{ first_name }}" and mail.status == Status.EXPANDING
    html = response.content.decode()
    assert "can no longer be edited" in html or "Not saved: sending started meanwhile." in html
    if when != "before the post":
        assert "Not saved: sending started meanwhile." in html


@pytest.mark.django_db(transaction=True)
def test_expansion_passes_by_a_request_being_edited_and_takes_it_afterwards():
    import threading

    from django.db import connection, transaction

    mail = rows_request(status=Status.QUEUED, send_at=timezone.now())
    locked, release, claimed = threading.Event(), threading.Event(), []

    def editor():  # holds the row lock the compose save takes
        with transaction.atomic():
            MessageRequest.objects.select_for_update().get(pk=mail.pk)
            locked.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=editor)
    thread.start()
    assert locked.wait(10)
    claimed.append(expand.claim_request())
    release.set()
    thread.join()
    assert claimed == [None]  # skipped while locked, not blocked and not taken
    assert expand.claim_request().pk == mail.pk


def test_tries_match_the_history_and_a_retry_is_explained(panel):
    from dbmail.models import DeliveryEvent

    mail = expanded_request(["sent"])
    email = mail.emails.get()
    TextOfEmail.objects.filter(pk=email.pk).update(attempts=1)
    DeliveryEvent.objects.create(email=email, kind="attempt", outcome="sent", smtp_code=250, text="ok")
    DeliveryEvent.objects.create(email=email, kind="tracking", outcome="delivered", text="delivered")
    url = reverse("commpanel:email", args=[mail.pk, email.pk])
    assert '<dd id="tries">1</dd>' in panel.get(url).content.decode()  # a tracking row is no try
    DeliveryEvent.objects.create(email=email, kind="attempt", outcome="dropped", smtp_code=550, text="no")
    DeliveryEvent.objects.create(email=email, kind="admin", outcome="queued", text="retry now")
    html = panel.get(url).content.decode()
    assert '<dd id="tries">2; 1 since the last retry, of at most 100</dd>' in html


def test_a_page_of_emails_costs_the_same_queries_for_any_number_of_rows(panel, django_assert_max_num_queries):
    mail = expanded_request(["sent"] * 30)
    url = reverse("commpanel:status", args=[mail.pk])
    with django_assert_max_num_queries(12):
        panel.get(url)
    with django_assert_max_num_queries(20):
        panel.get(reverse("commpanel:request", args=[mail.pk]))


def test_the_request_page_counts_emails_possibly_delivered_twice(panel):
    mail = MessageRequestFactory(status=Status.EXPANDED)
    TextOfEmailFactory(request=mail, status=TextOfEmail.Status.SENT, possibly_delivered=1, attempts=2)
    TextOfEmailFactory(request=mail, status=TextOfEmail.Status.DEFERRED, possibly_delivered=2, attempts=2)
    TextOfEmailFactory(request=mail, status=TextOfEmail.Status.DEFERRED, attempts=1)
    TextOfEmailFactory(status=TextOfEmail.Status.SENT, possibly_delivered=1)  # another request's
    page = panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    assert "Outcome unknown (possibly delivered) for 2 emails" in page
    other = MessageRequestFactory(status=Status.EXPANDED)
    TextOfEmailFactory(request=other, status=TextOfEmail.Status.SENT)
    assert "possibly delivered" not in panel.get(reverse("commpanel:request", args=[other.pk])).content.decode()


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
    live = panel.get(reverse("commpanel:status", args=[mail.pk])).json()
    assert (live["status"], live["state_label"], live["resumable"]) == ("failed", "Failed", True)
    assert 'id="resume"' in live["html"]["actions"]
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
    retried = mail.audit_events.get(kind="retry")
    assert retried.actor == editor
    html = response.content.decode()
    assert 'id="history"' in html and f"<td>{editor.username}</td><td>retried</td>" in html
    assert "the directory server is offline" in html  # the failure stays in the history, by dbmail_cron


def test_retry_is_refused_while_the_recipient_set_is_still_missing(panel):
    mail = MessageRequestFactory(recipient_set="retired_set")
    expand.expand_due()
    response = panel.post(reverse("commpanel:resume", args=[mail.pk]), follow=True)
    assert "Not retried: it would fail again: No recipient set named" in response.content.decode()
    assert MessageRequest.objects.get(pk=mail.pk).status == Status.FAILED
    panel.post(reverse("commpanel:resume", args=[expanded_request(["sent"]).pk]))  # not failed: nothing happens
    assert not AuditEvent.objects.filter(kind="retry").exists()


def test_a_failed_request_can_be_cancelled(panel, editor):
    mail = MessageRequestFactory(recipient_set="retired_set")
    expand.expand_due()
    assert panel.get(reverse("commpanel:status", args=[mail.pk])).json()["cancellable"]
    panel.post(reverse("commpanel:cancel", args=[mail.pk]))
    assert MessageRequest.objects.get(pk=mail.pk).status == Status.CANCELLED
    assert mail.audit_events.get(kind="cancel").actor == editor


def test_mail_of_an_inactive_sender_shows_as_held(panel):
    mail = expanded_request(["queued", "deferred", "sent"])
    SenderAccount.objects.filter(pk=mail.sender_id).update(active=False)
    data = panel.get(reverse("commpanel:status", args=[mail.pk])).json()
    assert data["counts"] == {"held": 2, "sent": 1} and data["cancellable"]
    page = panel.get(reverse("commpanel:request", args=[mail.pk]) + "?status=held")
    assert [e.to_address for e in page.context["emails"]] == ["r0@example.org", "r1@example.org"]
    assert (data["state"], data["state_label"]) == ("held", "Held") and data["line"].startswith("Held: ")
    listing = panel.get(reverse("commpanel:requests")).content.decode()
    assert '<span class="badge badge-held">Held</span>' in listing
    queued = MessageRequestFactory(recipient_set="all_active")
    page = panel.get(reverse("commpanel:request", args=[queued.pk])).content.decode()
    assert 'id="held"' in page and ">Held<" in page


def test_a_paused_request_says_why_and_offers_resume_or_cancel(panel, editor):
    from dbmail.track import guard

    mail = expanded_request(["queued", "queued", "sent"])
    guard.pause(mail, "26 of 500 emails sent bounced hard (5.2 %, above 5 %)")
    page = panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    assert 'id="paused"' in page and "26 of 500 emails sent bounced hard" in page
    assert ">Resume sending<" in page and 'id="cancel"' in page
    data = panel.get(reverse("commpanel:status", args=[mail.pk])).json()
    assert (data["state"], data["state_label"], data["active"]) == ("paused", "Paused", False)
    assert data["line"].startswith("Paused: 26 of 500 emails sent bounced hard")
    assert data["resumable"] and data["cancellable"]
    assert ">Paused<" in panel.get(reverse("commpanel:requests")).content.decode()

    response = panel.post(reverse("commpanel:resume", args=[mail.pk]), follow=True)
    assert "Resumed" in response.content.decode()
    mail.refresh_from_db()
    assert mail.status == Status.EXPANDED
    events = mail.audit_events.order_by("at", "id")
    assert [(e.kind, e.actor, e.action) for e in events] == [
        ("pause", None, "paused by the reputation guard"),
        ("resume", editor, "resume"),
    ]
    history = response.content.decode()
    assert "dbmail_track (reputation guard)" in history and history.count(">resume<") == 1


def test_a_paused_request_can_be_cancelled_by_hand(panel, editor):
    from dbmail.track import guard

    mail = expanded_request(["queued", "sent"])
    guard.pause(mail, "too many complaints")
    panel.post(reverse("commpanel:cancel", args=[mail.pk]))
    assert MessageRequest.objects.get(pk=mail.pk).status == Status.CANCELLED
    assert mail.audit_events.get(kind="cancel").actor == editor


def test_mail_over_the_senders_daily_cap_says_it_waits_for_tomorrow(panel):
    from dbmail.models import SenderDailyCount
    from dbmail.send import caps

    mail = expanded_request(["queued", "sent"])
    SenderAccount.objects.filter(pk=mail.sender_id).update(daily_cap=1)
    SenderDailyCount.objects.create(account_id=mail.sender_id, day=caps.day_of(timezone.now()), taken=1)
    data = panel.get(reverse("commpanel:status", args=[mail.pk])).json()
    assert "waiting: daily cap reached, resumes tomorrow 00:00 UTC" in data["line"]
    page = panel.get(reverse("commpanel:request", args=[mail.pk])).content.decode()
    assert 'id="waiting-cap"' in page and "Waiting: daily cap reached, resumes tomorrow 00:00 UTC" in page


def test_the_email_page_shows_the_message_as_it_was_sent(panel):
    mail = expanded_request(["sent"])
    email = mail.emails.get()
    email.subject, email.text = "Hello Ann", "Dear Ann,\nread on.\n"
    email.html = '<p>Dear <b>Ann</b></p><script>alert("x")</script>'
    email.headers = {"List-Unsubscribe": "<https://x/unsubscribe/t/>"}
    email.save()
    page = panel.get(reverse("commpanel:email", args=[mail.pk, email.pk])).content.decode()
    assert '<dd id="sent-subject">Hello Ann</dd>' in page
    assert "Dear Ann,\nread on." in page
    assert "List-Unsubscribe" in page and "https://x/unsubscribe/t/" in page
    # The HTML part in a sandboxed frame (no scripts run), escaped into srcdoc.
    assert '<iframe class="html-preview" id="sent-html" sandbox ' in page
    assert 'srcdoc="&lt;p&gt;Dear &lt;b&gt;Ann&lt;/b&gt;&lt;/p&gt;&lt;script&gt;' in page


def test_a_message_stored_whole_is_shown_as_its_source(panel):
    mail = expanded_request(["sent"])
    email = mail.emails.get()
    email.raw_message = b"Subject: With a file\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x--\r\n"
    email.save()
    page = panel.get(reverse("commpanel:email", args=[mail.pk, email.pk])).content.decode()
    assert 'id="sent-raw"' in page and "multipart/mixed; boundary=x" in page


def test_the_history_names_a_panel_made_request_once(panel, editor):
    sender = SenderAccount.objects.create(address="office@example.org")
    panel.post(reverse("commpanel:compose"), compose_data(sender))
    page = panel.get(reverse("commpanel:request", args=[MessageRequest.objects.get().pk])).content.decode()
    history = page[page.index('id="history"') :]
    assert history.count("create draft") == 1 and "<td>created</td>" not in history
    # One made elsewhere, with no creation event, still shows when it was made.
    other = MessageRequestFactory()
    history = panel.get(reverse("commpanel:request", args=[other.pk])).content.decode()
    assert "<td>created</td>" in history[history.index('id="history"') :]
