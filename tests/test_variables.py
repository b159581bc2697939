"""Unknown template variables (dbmail.content.variables): warned of on the compose page, the request page and
in the sending API's answer, with the closest known name; never a refusal."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from dbmail.content import variables
from dbmail.models import MessageRequest

from .factories import MessageRequestFactory, SenderAccountFactory
from .sendingapi import client_for, composer

pytestmark = pytest.mark.django_db

TYPO = "{{ frist_name }} is not a known variable: did you mean first_name?"


def _unknown(source, **known):
    return [str(u) for u in variables.unknown([source], variables.known_names(**known))]


def test_a_misspelt_name_is_named_with_the_closest_known_one():
    assert _unknown("Hi {{ frist_name }}, {{ site_nme }}") == [
        TYPO,
        "{{ site_nme }} is not a known variable: did you mean site_name?",
    ]
    assert _unknown("{{ zzz }}") == ["{{ zzz }} is not a known variable: it will be empty."]


def test_names_in_tags_filters_and_conditions_count_too():
    assert _unknown("{% if lst_name %}{{ email|default:fallback }}{% endif %}{% firstof usrname name %}") == [
        "{{ lst_name }} is not a known variable: did you mean last_name?",
        "{{ fallback }} is not a known variable: it will be empty.",
        "{{ usrname }} is not a known variable: did you mean username?",
    ]


def test_names_the_template_binds_are_known_inside_it_only():
    source = (
        "{% for line in lines %}{{ line.text }} {{ forloop.counter }}{% endfor %}"
        "{% with greeting=first_name|upper %}{{ greeting }}{% endwith %}{{ greeting }}"
        "{% cycle 'odd' 'even' as parity %}{{ parity }}"
    )
    assert [u.name for u in variables.unknown([source], variables.known_names())] == ["lines", "greeting"]


def test_context_keys_and_columns_are_known_and_literals_are_no_names():
    source = "{{ promo }} {{ city }} {{ 'text' }} {{ 3 }} {{ True }} {{ unsubscribe_url }} {{ web_version_url }}"
    assert _unknown(source, context={"promo": "X"}, columns=["city"]) == []
    assert _unknown("{{ cty }}", columns=["city"]) == ["{{ cty }} is not a known variable: did you mean city?"]


def test_a_template_that_does_not_compile_has_no_warnings_only_its_error():
    assert _unknown("{% if frist_name %}") == []


# --- the comm panel ---


def test_the_live_check_warns_and_still_says_ok(panel):
    result = panel.post(reverse("commpanel:check"), {"subject": "Hi {{ frist_name }}", "text_body": "x"}).json()
    assert result["ok"] is True and result["warnings"] == [TYPO]
    clean = panel.post(reverse("commpanel:check"), {"subject": "Hi {{ first_name }}", "text_body": "{{ email }}"})
    assert clean.json()["warnings"] == []


def test_the_live_check_knows_the_csv_columns_chosen_and_the_drafts_context(panel):
    sender = SenderAccountFactory()
    csv = SimpleUploadedFile("people.csv", b"email,city\nann@example.org,Oslo\n", content_type="text/csv")
    data = {"sender": sender.pk, "subject": "{{ city }} {{ cty }}", "text_body": "x", "source": "csv", "csv_file": csv}
    result = panel.post(reverse("commpanel:check"), data).json()
    assert result["warnings"] == ["{{ cty }} is not a known variable: did you mean city?"]
    draft = MessageRequestFactory(status=MessageRequest.Status.DRAFT, context={"promo_code": "X1"})
    url = reverse("commpanel:check") + f"?request={draft.pk}"
    assert panel.post(url, {"subject": "{{ promo_code }}", "text_body": "{{ promo_cod }}"}).json()["warnings"] == [
        "{{ promo_cod }} is not a known variable: did you mean promo_code?"
    ]


def test_the_compose_page_has_the_place_for_the_warnings_and_asks_with_the_draft(panel):
    draft = MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    page = panel.get(reverse("commpanel:edit", args=[draft.pk])).content.decode()
    assert 'id="live-warnings"' in page
    assert f'data-check-url="{reverse("commpanel:check")}?request={draft.pk}"' in page


def test_the_request_page_shows_the_warning_and_a_clean_one_none(panel):
    typo = MessageRequestFactory(status=MessageRequest.Status.DRAFT, subject="Hi {{ frist_name }}", text_body="x")
    page = panel.get(reverse("commpanel:request", args=[typo.pk])).content.decode()
    assert 'id="unknown-variables"' in page
    assert "{{ frist_name }} is not a known variable: did you mean first_name?" in page
    clean = MessageRequestFactory(status=MessageRequest.Status.DRAFT, subject="Hi {{ first_name }}", text_body="x")
    page = panel.get(reverse("commpanel:request", args=[clean.pk])).content.decode()
    assert 'id="unknown-variables"' not in page and "is not a known variable" not in page


# --- the sending API ---


def _create(**extra):
    SenderAccountFactory(address="office@example.org")
    data = {
        "sender": "office@example.org",
        "subject": "Hello {{ first_name }}",
        "text_body": "Your code is {{ code }}.",
        "rows": [{"email": "cy@example.net", "code": 11}],
        "draft": True,
        **extra,
    }
    return client_for(composer("ann")).post("/api/v1/requests/", data, format="json")


def test_the_api_answers_a_new_request_with_its_warnings():
    made = _create(text_body="Your code is {{ cod }}, {{ frist_name }}. {{ promo }}", context={"promo": "P"})
    assert made.status_code == 201, made.json()
    assert made.json()["warnings"] == [
        "{{ cod }} is not a known variable: did you mean code?",
        TYPO,
    ]


def test_the_api_gives_no_warning_for_known_names():
    made = _create()
    assert made.status_code == 201, made.json()
    assert made.json()["warnings"] == []
