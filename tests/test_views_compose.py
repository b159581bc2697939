"""Compose: the form saves drafts (recipients, CSV, attachments, template errors) and the live count."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

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
    assert "nope" in response.context["form"].errors["addresses"][0]
    assert not MessageRequest.objects.exists()


def test_group_choice_is_stored_as_groups_params(panel, sender):
    teachers = GroupFactory(name="Teachers")
    data = compose_data(sender, source="set", recipient_set="groups", groups=[teachers.pk])
    panel.post(reverse("commpanel:compose"), data)
    mail = MessageRequest.objects.get()
    assert (mail.recipient_set, mail.recipient_params) == ("groups", {"groups": ["Teachers"]})


def test_group_set_without_a_group_is_refused(panel, sender):
    response = panel.post(reverse("commpanel:compose"), compose_data(sender, source="set", recipient_set="groups"))
    assert "Tick at least one group." in response.context["form"].errors["recipient_set"]


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
    data = compose_data(sender, source="csv", csv_file=csv_upload(csv), csv_skip_bad="on")
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
    assert result == {"ok": False, "error": "Paste at least one address."}


def test_count_of_a_draft_uses_its_stored_csv(panel, sender):
    mail = MessageRequestFactory(
        status=MessageRequest.Status.DRAFT,
        recipient_set="addresses",
        recipient_params={"source": "csv", "rows": [{"email": "a@example.org"}, {"email": "b@example.org"}]},
    )
    result = panel.post(reverse("commpanel:edit_count", args=[mail.pk]), compose_data(sender, source="csv")).json()
    assert result["count"] == 2
