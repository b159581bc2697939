"""The audience summary agrees with dbmail.content.recipients.count and finds empty variables."""

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dbmail.content import audience, recipients
from dbmail.models import MessageRequest, Suppression


def test_printed_variables_are_the_top_level_names():
    assert audience.printed_variables("{{ a }} {{b|upper}} {{ a.x }}", "{% if c %}{{ d }}{% endif %}") == [
        "a",
        "b",
        "d",
    ]


def test_a_variable_with_a_default_is_not_reported_empty():
    # "1 would get an empty {{ first_name }}" for a subject that said {{ first_name|default:'friend' }}.
    assert audience.unguarded_variables("Hi {{ first_name|default:'friend' }}", "{{ x | default_if_none:'-' }}") == []
    assert audience.unguarded_variables("{{ a|default:'-' }} {{ a }}", '{{ b|lower|default:"b" }}') == ["a"]
    assert audience.printed_variables("{{ a|default:'-' }}") == ["a"]  # still listed as a variable it uses


@pytest.mark.django_db
@hsettings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["a@x.org", "A@X.org", "b@x.org", "bad", "c@x.org", ""]), max_size=12))
def test_count_matches_the_recipient_registry(addresses):
    Suppression.objects.get_or_create(address="c@x.org")
    params = {"rows": [{"email": a} for a in addresses]}
    mail = MessageRequest(recipient_set="addresses", recipient_params=params, subject="s", text_body="t")
    summary = audience.summarise(mail)
    assert summary.count == recipients.count("addresses", params)


@pytest.mark.django_db
def test_empty_and_invalid_are_reported(settings):
    settings.DBMAIL_LARGE_SEND_WARNING = 0
    rows = [{"email": "a@x.org", "balance": "1"}, {"email": "b@x.org"}, {"email": "nope"}]
    mail = MessageRequest(
        recipient_set="addresses",
        recipient_params={"rows": rows},
        subject="{{ balance }}",
        text_body="{{ unsubscribe_url }} {{ email|default:'-' }} {{ note|default:'none' }}",
    )
    summary = audience.summarise(mail)
    assert (summary.count, summary.invalid_count, summary.invalid) == (2, 1, ["nope"])
    assert summary.empty == {"balance": {"count": 1, "examples": ["b@x.org"]}}
    assert summary.large


@pytest.mark.django_db
def test_a_set_that_cannot_list_its_recipients_is_an_error_not_a_crash():
    broken = MessageRequest(recipient_set="groups", recipient_params={"groups": 5}, subject="s", text_body="t")
    summary = audience.summarise(broken)
    assert summary.count == 0 and "must be a list of group names" in summary.error
    assert audience.summarise(MessageRequest(recipient_set="gone", subject="s", text_body="t")).error.startswith(
        "No recipient set named 'gone'"
    )
