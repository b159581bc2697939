"""Saved templates: create with template checking, edit, delete."""

import pytest
from django.urls import reverse

from dbmail.models import EmailTemplate

pytestmark = pytest.mark.django_db


def test_create_edit_delete(panel, editor):
    data = {"name": "Newsletter", "subject": "News {{ first_name }}", "text_body": "Hi", "html_body": ""}
    assert panel.post(reverse("commpanel:template_new"), data).status_code == 302
    template = EmailTemplate.objects.get()
    assert template.updated_by == editor
    panel.post(reverse("commpanel:template_edit", args=[template.pk]), {**data, "text_body": "Changed"})
    template.refresh_from_db()
    assert template.text_body == "Changed"
    assert template.name in panel.get(reverse("commpanel:templates")).content.decode()
    panel.post(reverse("commpanel:template_delete", args=[template.pk]))
    assert not EmailTemplate.objects.exists()


def test_template_errors_are_refused_with_the_line(panel):
    data = {"name": "Broken", "subject": "x", "text_body": "ok\n{{ a|nosuchfilter }}", "html_body": ""}
    response = panel.post(reverse("commpanel:template_new"), data)
    assert "line 2" in response.context["form"].errors["text_body"][0]
    assert not EmailTemplate.objects.exists()


def test_saving_a_misspelt_variable_warns_and_keeps_the_template(panel):
    data = {"name": "Typo", "subject": "Hi {{ frist_name }}", "text_body": "Hi", "html_body": ""}
    response = panel.post(reverse("commpanel:template_new"), data, follow=True)
    assert EmailTemplate.objects.filter(name="Typo").exists()
    shown = [str(m) for m in response.context["messages"]]
    assert any("{{ frist_name }} is not a known variable: did you mean first_name?" in m for m in shown), shown


def test_the_template_pages_preview_does_not_promise_a_next_page(panel):
    page = panel.get(reverse("commpanel:template_new")).content.decode()
    assert "is on the next page" not in page and "Composing from the template previews" in page
