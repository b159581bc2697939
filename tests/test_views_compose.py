"""Compose: the form saves drafts (recipients, CSV, attachments, template errors) and the live count."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from dbmail.content import recipients
from dbmail.models import EmailTemplate, MessageRequest, Suppression

from .factories import GroupFactory, MessageRequestFactory, SenderAccountFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def sender():
    return SenderAccountFactory()


def compose_data(sender, **extra):
    data = {
        "sender": sender.pk,
        "reply_to": "",
        "subject": "Hello {{ first_name }}",
        "text_body": "Your balance is {{ balance }}.\n",
        "html_body": "",
        "source": "paste",
        "addresses": "ann@example.org\nBob <bob@example.org>",
    }
    data.update(extra)
    return data


def test_compose_saves_a_draft_and_queues_nothing(panel, editor, sender):
    response = panel.post(reverse("commpanel:compose"), compose_data(sender))
    mail = MessageRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("commpanel:request", args=[mail.pk])
    assert mail.status == MessageRequest.Status.DRAFT
    assert mail.creator == editor
    assert mail.recipient_set == "addresses"
    assert mail.recipient_params["rows"] == [{"email": "ann@example.org"}, {"email": "bob@example.org", "name": "Bob"}]
    assert not mail.emails.exists()


def test_template_error_is_shown_with_its_line_and_nothing_is_saved(panel, sender):
    data = compose_data(sender, text_body="Line one\n{% if x %}\nno end\n")
    response = panel.post(reverse("commpanel:compose"), data)
    assert response.status_code == 200
    errors = response.context["form"].errors["text_body"]
    assert "line 2" in errors[0]
    assert not MessageRequest.objects.exists()


def test_only_active_sender_accounts_can_be_chosen(panel, sender):
    inactive = SenderAccountFactory(address="old@example.org", active=False)
    response = panel.post(reverse("commpanel:compose"), compose_data(inactive))
    assert "sender" in response.context["form"].errors
    assert not MessageRequest.objects.exists()


def test_reply_to_is_validated(panel, sender):
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, reply_to="not an address"))
    assert "reply_to" in response.context["form"].errors


def test_pasted_bad_addresses_are_named(panel, sender):
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, addresses="ann@example.org, nope"))
    errors = response.context["form"].errors["addresses"]
    assert errors[0].startswith("1 bad line(s)") and "line 1: not an email address: 'nope'" in errors
    assert not MessageRequest.objects.exists()


def test_group_choice_is_stored_as_groups_params(panel, sender):
    teachers = GroupFactory(name="Teachers")
    data = compose_data(sender, source="set", recipient_set="groups", groups=[teachers.pk])
    panel.post(reverse("commpanel:compose"), data)
    mail = MessageRequest.objects.get()
    assert (mail.recipient_set, mail.recipient_params) == ("groups", {"groups": ["Teachers"]})


def test_a_set_that_reads_no_parameters_ignores_what_the_hidden_box_holds(panel, sender):
    data = compose_data(sender, source="set", recipient_set="staff", params="{not json")
    panel.post(reverse("commpanel:compose"), data)
    mail = MessageRequest.objects.get()
    assert (mail.recipient_set, mail.recipient_params) == ("staff", {})


def test_a_set_that_reads_parameters_still_has_them_checked(panel, sender, monkeypatch):
    monkeypatch.setitem(recipients._REGISTRY, "by_class", recipients.RecipientSet("by_class", "A class", list))
    data = compose_data(sender, source="set", recipient_set="by_class", params="{not json")
    response = panel.post(reverse("commpanel:compose"), data)
    assert response.context["form"].errors["params"][0].startswith("The parameters are not valid JSON")
    data["params"] = '{"class": "4b"}'
    panel.post(reverse("commpanel:compose"), data)
    assert MessageRequest.objects.get().recipient_params == {"class": "4b"}


def test_group_set_without_a_group_is_refused(panel, sender):
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, source="set", recipient_set="groups"))
    assert "Tick at least one group." in response.context["form"].errors["groups"]


def csv_upload(text, name="people.csv"):
    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def test_csv_columns_become_rows_with_variables(panel, sender):
    csv = "Email,First Name,Balance\nann@example.org,Ann,12.50\nbob@example.org,Bob,3\n"
    panel.post(reverse("commpanel:compose"), compose_data(sender, source="csv", csv_file=csv_upload(csv)))
    mail = MessageRequest.objects.get()
    assert mail.recipient_params["columns"] == ["email", "first_name", "balance"]
    assert mail.recipient_params["rows"][0] == {"email": "ann@example.org", "first_name": "Ann", "balance": "12.50"}


def test_csv_bad_rows_are_listed_and_the_file_refused(panel, sender):
    csv = "email;balance\nann@example.org;1\nnot-an-address;2\n;3\nbob@example.org;4;extra\n"
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, source="csv", csv_file=csv_upload(csv)))
    errors = response.context["form"].errors["csv_file"]
    assert errors[0].startswith("3 bad row(s) in people.csv")
    assert "line 3: invalid address 'not-an-address'" in errors
    assert "line 4: no email address" in errors
    assert "line 5: 3 fields where the header has 2" in errors
    assert not MessageRequest.objects.exists()


def test_csv_bad_rows_left_out_only_when_asked_and_reported(panel, sender):
    csv = "email,balance\nann@example.org,1\nnope,2\n"
    data = compose_data(sender, source="csv", csv_file=csv_upload(csv), skip_bad="on")
    response = panel.post(reverse("commpanel:compose"), data, follow=True)
    mail = MessageRequest.objects.get()
    assert [r["email"] for r in mail.recipient_params["rows"]] == ["ann@example.org"]
    assert mail.recipient_params["left_out"] == 1
    assert "Left out: line 3: invalid address 'nope'" in [str(m) for m in response.context["messages"]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,balance\nAnn,1\n", "must be “email”"),
        ("email,bad column!\na@example.org,1\n", "cannot be template variables"),
        ("", "empty"),
    ],
)
def test_unusable_csv_files_get_a_clear_error(panel, sender, content, message):
    response = panel.post(
        reverse("commpanel:compose"), compose_data(sender, source="csv", csv_file=csv_upload(content))
    )
    assert message in response.context["form"].errors["csv_file"][0]


def test_csv_that_is_not_utf8_is_refused(panel, sender):
    upload = SimpleUploadedFile("x.csv", "email,name\na@example.org,Zoë\n".encode("utf-16"))
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, source="csv", csv_file=upload))
    assert "not UTF-8" in response.context["form"].errors["csv_file"][0]


def test_attachments_are_stored_and_limited(panel, sender, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    settings.DBMAIL_MAX_ATTACHMENT_BYTES = 10
    big = SimpleUploadedFile("big.pdf", b"x" * 11, content_type="application/pdf")
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, new_attachments=[big]))
    assert "the limit per request is 10" in response.context["form"].errors["new_attachments"][0]
    assert not MessageRequest.objects.exists()

    small = SimpleUploadedFile("plan.txt", b"0123456789", content_type="text/plain")
    panel.post(reverse("commpanel:compose"), compose_data(sender, new_attachments=[small]))
    attachment = MessageRequest.objects.get().attachments.get()
    assert (attachment.filename, attachment.size, attachment.content_type) == ("plan.txt", 10, "text/plain")
    assert attachment.file.read() == b"0123456789"


def test_editing_a_draft_keeps_csv_and_removes_attachments(panel, sender, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    csv = "email,balance\nann@example.org,1\n"
    upload = SimpleUploadedFile("a.txt", b"abc")
    panel.post(
        reverse("commpanel:compose"),
        compose_data(sender, source="csv", csv_file=csv_upload(csv), new_attachments=[upload]),
    )
    mail = MessageRequest.objects.get()
    attachment = mail.attachments.get()
    data = compose_data(sender, source="csv", subject="Changed", remove_attachments=[attachment.pk])
    response = panel.post(reverse("commpanel:edit", args=[mail.pk]), data)
    assert response.status_code == 302
    mail.refresh_from_db()
    assert mail.subject == "Changed"
    assert mail.recipient_params["rows"] == [{"email": "ann@example.org", "balance": "1"}]
    assert not mail.attachments.exists()


@pytest.mark.parametrize("status", [MessageRequest.Status.EXPANDING, MessageRequest.Status.EXPANDED, "cancelled"])
def test_only_requests_not_yet_started_can_be_edited(panel, status):
    mail = MessageRequestFactory(status=status)
    response = panel.get(reverse("commpanel:edit", args=[mail.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("commpanel:request", args=[mail.pk])
    assert "Sending has started, so it can no longer be edited" in response.content.decode()
    assert panel.post(reverse("commpanel:edit_count", args=[mail.pk]), {}).status_code == 404


def test_compose_can_start_from_a_saved_template(panel):
    template = EmailTemplate.objects.create(name="News", subject="News for {{ first_name }}", text_body="Body")
    response = panel.get(reverse("commpanel:compose") + f"?template={template.pk}")
    form = response.context["form"]
    assert form.initial["subject"] == "News for {{ first_name }}"
    assert "first_name" in response.context["variables"]


def test_count_is_exact_distinct_deliverable_addresses(panel, sender, settings):
    settings.DBMAIL_LARGE_SEND_WARNING = 2
    group = GroupFactory(name="Parents")
    for i in range(3):
        UserFactory(username=f"p{i}", groups=[group])
    UserFactory(username="gone", groups=[group], is_active=False)
    UserFactory(username="twin", email="p0@example.org", groups=[group])  # the same address twice
    Suppression.objects.create(address="p1@example.org")
    data = compose_data(sender, source="set", recipient_set="groups", groups=[group.pk])
    result = panel.post(reverse("commpanel:count"), data).json()
    assert result["ok"] and result["count"] == 2
    assert result["large"] is False
    UserFactory(username="p9", groups=[group])
    result = panel.post(reverse("commpanel:count"), data).json()
    assert result["count"] == 3 and result["large"] is True


def test_count_warns_about_empty_variables(panel, sender):
    csv = "email,balance\nann@example.org,1\nbob@example.org,\n"
    data = compose_data(sender, source="csv", csv_file=csv_upload(csv), text_body="{{ balance }} {{ typo }}")
    result = panel.post(reverse("commpanel:count"), data).json()
    assert result["empty"]["balance"] == {"count": 1, "examples": ["bob@example.org"]}
    assert result["empty"]["typo"]["count"] == 2
    assert result["columns"] == ["email", "balance"]


def test_count_reports_a_bad_choice(panel, sender):
    result = panel.post(reverse("commpanel:count"), compose_data(sender, addresses="")).json()
    assert result == {"ok": False, "errors": ["Paste at least one address."], "bad": [], "left_out": [], "count": None}


def test_count_of_a_draft_uses_its_stored_csv(panel, sender):
    mail = MessageRequestFactory(
        status=MessageRequest.Status.DRAFT,
        recipient_set="addresses",
        recipient_params={"source": "csv", "rows": [{"email": "a@example.org"}, {"email": "b@example.org"}]},
    )
    result = panel.post(reverse("commpanel:edit_count", args=[mail.pk]), compose_data(sender, source="csv")).json()
    assert result["count"] == 2


# --- One verdict for the live box and for saving ---


def test_the_live_box_and_saving_agree_on_a_paste_with_bad_lines(panel, sender):
    lines = [f"p{i}@example.org" for i in range(5000)]
    lines[3], lines[77] = "foo@", "just words"
    data = compose_data(sender, addresses="\n".join(lines))
    live = panel.post(reverse("commpanel:count"), data).json()
    assert live["ok"] is False and live["count"] == 4998
    assert live["bad"] == ["line 4: invalid address 'foo@'", "line 78: not an email address: 'just words'"]
    saved = panel.post(reverse("commpanel:compose"), data)
    assert saved.context["form"].errors["addresses"][0] == live["errors"][0]
    assert not MessageRequest.objects.exists()
    data["skip_bad"] = "on"
    live = panel.post(reverse("commpanel:count"), data).json()
    assert live["ok"] is True and live["count"] == 4998 and live["left_out"] == live["bad"]
    assert panel.post(reverse("commpanel:compose"), data).status_code == 302
    assert len(MessageRequest.objects.get().recipient_params["rows"]) == 4998


def test_two_addresses_on_one_line_are_two(panel, sender):
    live = panel.post(reverse("commpanel:count"), compose_data(sender, addresses="a@x.org b@x.org")).json()
    assert live["ok"] and live["count"] == 2 and live["bad"] == []


def test_the_live_box_counts_a_csv_with_one_bad_row_and_lists_it(panel, sender):
    csv = "email,balance\nann@example.org,1\nbroken,2\nbob@example.org,3\n"
    live = panel.post(reverse("commpanel:count"), compose_data(sender, source="csv", csv_file=csv_upload(csv))).json()
    assert live["ok"] is False and live["count"] == 2
    assert live["errors"][0].startswith("1 bad row(s) in people.csv") and live["bad"] == [
        "line 3: invalid address 'broken'"
    ]
    assert live["columns"] == ["email", "balance"]


def test_a_hidden_section_gives_no_stray_error(panel, sender):
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, addresses="", subject=""))
    form = response.context["form"]
    assert "recipient_set" not in form.errors  # no "No recipient set named ''" for a paste
    summary = form.error_summary()
    assert ("field-subject", "Subject", "This field is required.") in summary
    assert ("field-addresses", "Addresses", "Paste at least one address.") in summary
    html = response.content.decode()
    assert html.index('id="error-summary"') < html.index('id="field-sender"')
    assert '<a href="#field-addresses">Addresses: Paste at least one address.</a>' in html


def test_a_failed_save_keeps_the_files_for_the_next_try(panel, editor, sender, settings, tmp_path):
    from dbmail.models import PendingUpload

    settings.MEDIA_ROOT = str(tmp_path)
    csv = "email,first_name\nann@example.org,Ann\n"
    data = compose_data(sender, subject="", source="csv", csv_file=csv_upload(csv))
    data["new_attachments"] = [SimpleUploadedFile("plan.txt", b"the plan", content_type="text/plain")]
    response = panel.post(reverse("commpanel:compose"), data)
    assert response.status_code == 200
    kept_csv = PendingUpload.objects.get(kind="csv")
    kept_file = PendingUpload.objects.get(kind="attachment")
    assert kept_csv.owner == editor and kept_file.file.read() == b"the plan"
    html = response.content.decode()
    assert f'name="pending_csv" value="{kept_csv.pk}"' in html and "people.csv" in html
    assert f'value="{kept_file.pk}"' in html and "plan.txt" in html
    # The next try names them; nothing is chosen again.
    again = compose_data(
        sender, subject="Hi", source="csv", pending_csv=kept_csv.pk, pending_attachments=[kept_file.pk]
    )
    assert panel.post(reverse("commpanel:count"), again).json()["count"] == 1
    assert panel.post(reverse("commpanel:compose"), again).status_code == 302
    mail = MessageRequest.objects.get()
    assert mail.recipient_params["rows"] == [{"email": "ann@example.org", "first_name": "Ann"}]
    assert mail.attachments.get().file.read() == b"the plan"
    assert not PendingUpload.objects.exists()


def test_nobody_may_use_another_users_kept_files(panel, sender, settings, tmp_path):
    from django.core.files.base import ContentFile

    from dbmail.models import PendingUpload

    settings.MEDIA_ROOT = str(tmp_path)
    theirs = PendingUpload.objects.create(
        owner=UserFactory(username="other"),
        kind="attachment",
        file=ContentFile(b"secret", name="s.txt"),
        filename="s.txt",
        size=6,
    )
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, pending_attachments=[theirs.pk]))
    assert response.status_code == 200 and "pending_attachments" in response.context["form"].errors
    assert not MessageRequest.objects.exists()


def test_kept_uploads_are_purged_after_a_day(editor, settings, tmp_path):
    from datetime import timedelta

    from django.core.files.base import ContentFile
    from django.utils import timezone

    from dbmail.models import PendingUpload
    from dbmail.ops.purge import purge_pending_uploads

    settings.MEDIA_ROOT = str(tmp_path)
    old = PendingUpload.objects.create(
        owner=editor, kind="csv", file=ContentFile(b"x", name="old.csv"), filename="old.csv"
    )
    PendingUpload.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))
    PendingUpload.objects.create(owner=editor, kind="csv", file=ContentFile(b"y", name="new.csv"), filename="new.csv")
    assert purge_pending_uploads() == 1
    assert list(PendingUpload.objects.values_list("filename", flat=True)) == ["new.csv"]
    assert not (tmp_path / old.file.name).exists()


# --- The template check while typing ---


def test_check_reports_the_errors_saving_would_and_renders_a_preview(panel, editor):
    data = {"subject": "Hi {{ first_name }", "text_body": "Dear {{ first_name }},", "html_body": "<p>{% if x %}</p>"}
    result = panel.post(reverse("commpanel:check"), data).json()
    assert result["ok"] is False
    assert "is not closed" in result["errors"]["subject"] and "line 1" in result["errors"]["html_body"]
    assert set(result["errors"]) == {"subject", "html_body"}
    saved = panel.post(reverse("commpanel:compose"), compose_data(SenderAccountFactory(), **data))
    assert saved.context["form"].errors["subject"] == [result["errors"]["subject"]]
    good = panel.post(reverse("commpanel:check"), {**data, "subject": "Hi {{ first_name }}", "html_body": "<p>x</p>"})
    result = good.json()
    assert result["ok"] and result["preview"]["subject"] == f"Hi {editor.first_name}"
    assert result["preview"]["text"].startswith(f"Dear {editor.first_name},")
    assert "Unsubscribe" in result["preview"]["html"]


def test_check_makes_the_html_of_a_markdown_body(panel):
    data = {"subject": "S", "text_body": "# Title\n\n**bold** {{ first_name }}", "body_format": "markdown"}
    result = panel.post(reverse("commpanel:check"), data).json()
    assert result["html_body"] == "<h1>Title</h1>\n<p><strong>bold</strong> {{ first_name }}</p>"
    assert "<h1>Title</h1>" in result["preview"]["html"] and "color-scheme" in result["preview"]["html"]


def test_check_is_for_the_panel_only(client):
    assert client.post(reverse("commpanel:check"), {}).status_code == 302


def test_a_markdown_draft_stores_the_html_made_from_it(panel, sender):
    data = compose_data(sender, body_format="markdown", text_body="Hello **{{ first_name }}**")
    assert panel.post(reverse("commpanel:compose"), data).status_code == 302
    mail = MessageRequest.objects.get()
    assert (mail.body_format, mail.html_body) == ("markdown", "<p>Hello <strong>{{ first_name }}</strong></p>")


def test_compose_can_start_from_a_starter(panel):
    response = panel.get(reverse("commpanel:compose") + "?template=starter:newsletter")
    initial = response.context["form"].initial
    assert initial["body_format"] == "html" and "color-scheme" in initial["html_body"]


def test_start_from_shows_the_template_started_from(panel, sender):
    saved = EmailTemplate.objects.create(name="Mine", subject="s", text_body="t")
    page = panel.get(reverse("commpanel:compose") + "?template=starter:announcement").content.decode()
    assert '<option value="starter:announcement" selected>' in page
    page = panel.get(reverse("commpanel:compose") + f"?template={saved.pk}").content.decode()
    assert f'<option value="{saved.pk}" selected>' in page and 'starter:announcement" selected' not in page


def test_the_groups_label_comes_before_its_boxes(panel, sender):
    GroupFactory(name="Students")
    page = panel.get(reverse("commpanel:compose")).content.decode()
    field = page[page.index('id="field-groups"') :]
    assert field.index("<label>Groups</label>") < field.index('name="groups"')
    assert 'for=""' not in page  # a radio or box list has no one input for its label


def test_the_parameters_box_says_the_built_in_sets_need_none(panel, sender):
    page = panel.get(reverse("commpanel:compose")).content.decode()
    assert "Parameters (JSON, optional)" in page and "Leave it empty for all active users and for staff." in page


def test_the_hint_on_reusing_is_for_a_new_request_only(panel, sender):
    hint = "To start from an earlier request"
    assert hint in panel.get(reverse("commpanel:compose")).content.decode()
    draft = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    assert hint not in panel.get(reverse("commpanel:edit", args=[draft.pk])).content.decode()
