"""Attack: hostile JSON text at the sending API (docs/api.md), through the real test client.

test_sending_api_input throws hypothesis-made objects at the API, written by
json.dumps, which can only write well-formed JSON. This writes the text
itself, so it can give what a hostile client sends: keys given twice,
numbers past a float's range or past Python's 4,300 digits, NaN and Infinity
literals, arrays of thousands, nesting past any limit, any unicode. Every
answer must be a success or a 4xx with a JSON object saying why, never a
500; and a 4xx writes nothing at all (every table the API writes is counted).
"""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbmail.intake.api.parsers import MAX_DEPTH, loads
from dbmail.models import ApiSend, AuditEvent, MessageRequest, PendingUpload, RequestAttachment, TextOfEmail

from .conftest import fuzz_settings
from .factories import SenderAccountFactory
from .sendingapi import client_for, composer

pytestmark = pytest.mark.django_db
SEND_OK = {"to": "cy@example.net", "subject": "Hello", "text": "Hi."}
REQUEST_OK = {"sender": "office@example.org", "subject": "Hello", "text_body": "Hi.", "rows": ["cy@example.net"]}
WRITTEN = [ApiSend, AuditEvent, MessageRequest, PendingUpload, RequestAttachment, TextOfEmail]


@pytest.fixture(autouse=True)
def setup(settings, db):
    settings.DBMAIL_API_SEND_RATE = "off"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    SenderAccountFactory(address="office@example.org")


@pytest.fixture
def api():
    return client_for(composer("ann"))


def counts():
    return {model.__name__: model.objects.count() for model in WRITTEN}


# --- JSON text, written by hand ------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
numbers = st.sampled_from(
    ["0", "-0", "1e400", "-1e400", "1e-400", "9" * 5000, "9" * 300, "-9223372036854775809", "1.5", "NaN", "Infinity"]
)


def _string(text):
    return json.dumps(text)  # lone surrogates are written as \\ud800 escapes


def _value(inner):
    arrays = st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
    objects = st.lists(st.tuples(any_text.map(_string), inner), max_size=4).map(
        lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    )
    return arrays | objects


scalar_text = st.sampled_from(["null", "true", "false", '""']) | numbers | any_text.map(_string)
json_text = st.recursive(scalar_text, _value, max_leaves=10)
huge = st.sampled_from(
    [
        "[" * 5000 + "]" * 5000,
        '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
        "[" + ",".join(['"cy@example.net"'] * 20_000) + "]",
        "[" + ",".join(["{}"] * 5000) + "]",
    ]
)


@st.composite
def body(draw, good):
    """A mostly right object whose fields are kept, given twice, or replaced by any JSON text at all."""
    pairs = []
    for name, value in good.items():
        choice = draw(st.sampled_from(["keep", "junk", "twice", "huge", "drop"]))
        if choice == "drop":
            continue
        kept = json.dumps(value)
        pairs.append((name, draw(huge) if choice == "huge" else draw(json_text) if choice == "junk" else kept))
        if choice == "twice":
            pairs.append((name, draw(json_text)))
    for name in draw(st.lists(st.sampled_from(["headers", "attachments", "context", "send_at", "cc"]), max_size=2)):
        pairs.append((name, draw(json_text | huge)))
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


def answer(api, path, text):
    before = counts()
    response = api.generic("POST", path, text.encode("utf-8", "surrogatepass"), content_type="application/json")
    assert response.status_code != 500, text[:300]
    assert response.status_code in (200, 201) or 400 <= response.status_code < 500, response.status_code
    if response.status_code >= 400:
        assert isinstance(response.json(), dict), response.content[:300]
        assert counts() == before, "a refused request wrote something"
    return response


@fuzz_settings(120)
@given(text=body(SEND_OK) | json_text)
def test_hostile_json_to_send_is_a_success_or_a_4xx_that_writes_nothing(api, text):
    answer(api, "/api/v1/send/", text)


@fuzz_settings(120)
@given(text=body(REQUEST_OK) | json_text)
def test_hostile_json_to_requests_is_a_success_or_a_4xx_that_writes_nothing(api, text):
    answer(api, "/api/v1/requests/", text)


# --- What the fuzzing found -----------------------------------------------------------------------


@pytest.mark.parametrize("path, good", [("/api/v1/send/", SEND_OK), ("/api/v1/requests/", REQUEST_OK)])
def test_a_key_given_twice_is_400(api, path, good):
    """Python's decoder kept the last `to` (another could read the first): the mail went to dd@, not cy@."""
    text = json.dumps(good)[:-1] + ', "subject": "Hi", "subject": "Other"}'
    response = answer(api, path, text)
    assert response.status_code == 400 and '"subject" is given more than once' in response.json()["detail"]


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_a_number_past_a_floats_range_is_400(api, number):
    """1e400 was read as infinity, which NaN and Infinity written as such are not: X-A: inf went out."""
    text = json.dumps(SEND_OK)[:-1] + ', "headers": {"X-A": ' + number + "}}"
    response = answer(api, "/api/v1/send/", text)
    assert response.status_code == 400 and "out of range" in response.json()["detail"]


@pytest.mark.parametrize(
    "value, why",
    [
        ("[" * 100_000, "nested more than"),  # RecursionError: a 500
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested more than"),
        ('{"X-A": "a", "X-A": "b"}', "given more than once"),
        ('{"X-A": NaN}', "NaN is not a JSON number"),
    ],
    ids=["deep-recursion", "deep", "key-twice", "nan"],
)
def test_multipart_json_fields_obey_the_same_rules_as_json_bodies(api, value, why):
    before = counts()
    response = api.post("/api/v1/send/", {**SEND_OK, "headers": value}, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert why in response.json()["headers"][0]
    assert counts() == before


def test_loads_refuses_and_says_why():
    assert loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for text, why in [('{"a":1,"a":2}', "more than once"), ("1e999", "out of range"), ("-Infinity", "not a JSON")]:
        with pytest.raises(ValueError, match=why):
            loads(text)
