"""dbmail.content.validation: a request's recipient set and templates, checked wherever a request is edited."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from dbmail.content import validation
from dbmail.models import MessageRequest

from .factories import MessageRequestFactory, SenderAccountFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_full_clean_reports_template_errors_with_lines_and_missing_bodies():
    request = MessageRequestFactory.build(
        sender=SenderAccountFactory(), subject="{% if %}", text_body="", html_body="", recipient_set="nosuch"
    )
    with pytest.raises(ValidationError) as exc:
        validation.full_clean(request)
    errors = exc.value.message_dict
    assert "line 1" in errors["subject"][0]
    assert "Write a text or an HTML body." in errors["text_body"]
    assert "nosuch" in errors["recipient_set"][0]
    assert validation.request_errors(MessageRequestFactory.build(sender=SenderAccountFactory())) == {}
    validation.full_clean(MessageRequestFactory.build(sender=SenderAccountFactory()))  # a good one passes


def test_the_model_alone_passes_what_only_the_content_can_refuse():
    request = MessageRequestFactory.build(sender=SenderAccountFactory(), html_body="{% endif %}", recipient_set="x")
    request.full_clean()  # the model knows no recipient sets or template engines
    assert set(validation.request_errors(request)) == {"recipient_set", "html_body"}


def test_the_admin_refuses_an_unknown_set_and_a_broken_template(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    sender = SenderAccountFactory()
    data = {
        "sender": sender.pk,
        "subject": "Hello {% if %}",
        "text_body": "Hi",
        "html_body": "",
        "recipient_set": "nosuch",
        "recipient_params": "{}",
        "context": "{}",
        "created_at_0": "2026-01-01",
        "created_at_1": "10:00:00",
        "send_at_0": "2026-01-01",
        "send_at_1": "10:00:00",
        "status": "draft",
    }
    response = client.post(reverse("admin:dbmail_messagerequest_add"), data)
    assert response.status_code == 200  # the form again, with the errors
    errors = response.context["adminform"].form.errors
    assert "nosuch" in errors["recipient_set"][0] and "Template error" in errors["subject"][0]
    assert not MessageRequest.objects.exists()
    good = {**data, "subject": "Hello {{ first_name }}", "recipient_set": "all_active"}
    assert client.post(reverse("admin:dbmail_messagerequest_add"), good).status_code == 302
    assert MessageRequest.objects.get().status == "draft"


def test_parameters_and_variables_that_are_not_objects_are_refused():
    request = MessageRequestFactory.build(sender=SenderAccountFactory(), recipient_params=[1], context="x")
    errors = validation.request_errors(request)
    assert errors == {
        "recipient_params": "The recipient parameters must be a JSON object, e.g. {}.",
        "context": "The template variables must be a JSON object, e.g. {}.",
    }
