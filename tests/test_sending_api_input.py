"""Bad input to the sending API (dbmail.intake.api.serializers, .parsers) answers 400 naming the field, never 500.

A parametrised set of malformed payloads (wrong types, huge strings, nested
junk, invalid addresses, CR/LF header injection), then hypothesis throwing
arbitrary JSON at both POST endpoints. Nothing bad is ever stored.
"""

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dbmail.intake.api.parsers import MAX_DEPTH, depth
from dbmail.models import ApiSend, MessageRequest, TextOfEmail

from .factories import SenderAccountFactory
from .sendingapi import client_for, composer

pytestmark = pytest.mark.django_db

SEND_OK = {"to": "cy@example.net", "subject": "Hello", "text": "Hi."}
REQUEST_OK = {"sender": "office@example.org", "subject": "Hello", "text_body": "Hi.", "rows": ["cy@example.net"]}
HUGE = "x" * 2_100_000  # over every field's limit, under the body's (DATA_UPLOAD_MAX_MEMORY_SIZE)
DROP = object()  # a case that leaves the field out


@pytest.fixture(autouse=True)
def setup(settings, db):
    settings.DBMAIL_API_SEND_RATE = "off"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    SenderAccountFactory(address="office@example.org")


@pytest.fixture
def api():
    return client_for(composer("ann"))


SEND_CASES = [
    ({"to": None}, "to"),
    ({"to": ["cy@example.net"]}, "to"),
    ({"to": {"email": "cy@example.net"}}, "to"),
    ({"to": 42}, "to"),
    ({"to": "cy@example.net, spy@example.com"}, "to"),
    ({"to": "cy@example.net\r\nBcc: spy@example.com"}, "to"),
    ({"to": "not-an-address"}, "to"),
    ({"to": "x" * 5000 + "@example.net"}, "to"),
    ({"to": "\ud800@example.net"}, "to"),
    ({"text": "a\x00b"}, "text"),
    ({"headers": {"X-A": "\udfff"}}, "headers"),
    ({"subject": "Hi\r\nBcc: spy@example.com"}, "subject"),
    ({"subject": HUGE}, "subject"),
    ({"subject": ["a", "b"]}, "subject"),
    ({"subject": True}, "subject"),
    ({"text": HUGE}, "text"),
    ({"text": {"nested": ["junk"]}}, "text"),
    ({"text": "", "html": ""}, "text"),
    ({"cc": "cy@example.net"}, "cc"),
    ({"cc": [{"a": 1}]}, "cc"),
    ({"cc": ["ok@example.net", "bad"]}, "cc"),
    ({"cc": ["x@example.net"] * 51}, "cc"),
    ({"from": {"id": 1}}, "from"),
    ({"from": 0}, "from"),
    ({"from": -1}, "from"),
    ({"from": "99999999999999999999999999"}, "from"),
    ({"from": "office@example.org\nBcc: spy@example.com"}, "from"),
    ({"from": "\ud800@example.org"}, "from"),  # an error that quoted it raw could not be rendered
    ({"reply_to": "nobody"}, "reply_to"),
    ({"reply_to": ["a@example.net"]}, "reply_to"),
    ({"headers": "X-A: b"}, "headers"),
    ({"headers": {"X-A": None}}, "headers"),
    ({"headers": {"X-A": "b\rc"}}, "headers"),
    ({"headers": {"X-A": "b\x00"}}, "headers"),
    ({"headers": {"Subject": "other"}}, "headers"),
    ({"headers": {"Content-Type": "text/html"}}, "headers"),
    ({"headers": {"X-A:B": "c"}}, "headers"),
    ({"headers": {f"X-{n}": "v" for n in range(101)}}, "headers"),
    ({"attachments": "x"}, "attachments"),
    ({"attachments": [{"filename": "a.txt"}]}, "attachments"),
    ({"attachments": [{"filename": "a\r\n.txt", "content": "AA=="}]}, "attachments"),
    ({"attachments": [{"filename": "a.txt", "content": "not base64!"}]}, "attachments"),
    ({"attachments": [{"filename": "a.txt", "content": "AA==", "content_type": "text/html\r\nX: y"}]}, "attachments"),
]


@pytest.mark.parametrize("change,field", SEND_CASES, ids=[f"{f}-{n}" for n, (_, f) in enumerate(SEND_CASES)])
def test_a_malformed_send_is_400_naming_the_field(api, change, field):
    response = api.generic("POST", "/api/v1/send/", json.dumps({**SEND_OK, **change}), content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert field in response.json()
    assert not TextOfEmail.objects.exists() and not ApiSend.objects.exists()


REQUEST_CASES = [
    ({"sender": None}, "sender"),
    ({"sender": [1]}, "sender"),
    ({"sender": 1.5}, "sender"),
    ({"sender": "x\udfff@example.org"}, "sender"),
    ({"sender": "\u00b2"}, "sender"),  # a digit to str.isdigit(), not to int()
    ({"subject": HUGE}, "subject"),
    ({"subject": "a\nb"}, "subject"),
    ({"text_body": HUGE}, "text_body"),
    ({"text_body": "", "html_body": ""}, "text_body"),
    ({"html_body": "{% for %}"}, "html_body"),
    ({"rows": "cy@example.net"}, "rows"),
    ({"rows": []}, "rows"),
    ({"rows": [[["nested"]]]}, "rows"),
    ({"rows": [{"email": ["cy@example.net"]}]}, "rows"),
    ({"rows": [{"email": "cy@example.net", "v": {"deep": 1}}]}, "rows"),
    ({"rows": [{"email": "cy@example.net", "name": "Cy\r\nBcc: spy@example.com"}]}, "rows"),
    ({"rows": [{"email": "cy@example.net", "v": HUGE[:20000]}]}, "rows"),
    ({"rows": [{"email": "cy@example.net", **{f"v{n}": n for n in range(101)}}]}, "rows"),
    ({"recipient_set": "staff"}, "recipient_set"),  # and rows too: one or the other
    ({"recipient_set": ["staff"], "rows": DROP}, "recipient_set"),
    ({"recipient_set": "staff", "rows": DROP, "recipient_params": [1]}, "recipient_params"),
    ({"recipient_set": "x" * 101}, "recipient_set"),
    ({"context": [1, 2]}, "context"),
    ({"context": {"a": {"b": 1}}}, "context"),
    ({"context": {"not a name": 1}}, "context"),
    ({"send_at": "tomorrow"}, "send_at"),
    ({"send_at": 12345}, "send_at"),
    ({"send_at": "1999-01-01T00:00:00Z"}, "send_at"),
    ({"draft": "perhaps"}, "draft"),
    ({"public": [True]}, "public"),
    ({"reply_to": "@"}, "reply_to"),
    ({"attachments": [{"filename": "a", "content": 5}]}, "attachments"),
    ({"attachments": [{"filename": "../../settings.py", "content": "AA=="}]}, "attachments"),
    ({"attachments": [{"filename": "a\\b.txt", "content": "AA=="}]}, "attachments"),
    ({"attachments": [{"filename": "..", "content": "AA=="}]}, "attachments"),
    ({"csv": "email\ncy@example.net", "rows": DROP}, "csv"),
    # What PostgreSQL's jsonb cannot store: NULs and lone surrogates, in values and keys.
    ({"rows": [{"email": "cy@example.net", "v": "a\x00b"}]}, "rows"),
    ({"rows": [{"email": "cy@example.net", "v": "\ud800"}]}, "rows"),
    ({"context": {"a": "\x00"}}, "context"),
    ({"context": {"a": "\udfff"}}, "context"),
    ({"recipient_set": "staff", "rows": DROP, "recipient_params": {"a": ["\x00"]}}, "recipient_params"),
    ({"recipient_set": "staff", "rows": DROP, "recipient_params": {"\ud800": 1}}, "recipient_params"),
]


@pytest.mark.parametrize("change,field", REQUEST_CASES, ids=[f"{f}-{n}" for n, (_, f) in enumerate(REQUEST_CASES)])
def test_a_malformed_request_is_400_naming_the_field(api, change, field):
    payload = {k: v for k, v in {**REQUEST_OK, **change}.items() if v is not DROP}
    # json.dumps escapes lone surrogates, which the test client's own encoder cannot write.
    response = api.generic("POST", "/api/v1/requests/", json.dumps(payload), content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert field in response.json(), response.json()
    assert not MessageRequest.objects.exists()


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"null", b'"a string"', b"[1, 2]", b"[" * 5000 + b"]" * 5000, b'{"a": ' * 40 + b"1" + b"}" * 40],
    ids=["broken", "null", "string", "list", "deep-list", "deep-object"],
)
@pytest.mark.parametrize("path", ["/api/v1/send/", "/api/v1/requests/"])
def test_bodies_that_are_not_an_object_are_400(api, path, body):
    response = api.generic("POST", path, body, content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize("path", ["/api/v1/send/", "/api/v1/requests/"])
def test_a_body_over_djangos_limit_is_413(api, path, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.post(path, {**SEND_OK, "text": "x" * 2000}, format="json")
    assert response.status_code == 413 and "DATA_UPLOAD_MAX_MEMORY_SIZE" in response.json()["detail"]


def test_a_csv_file_that_is_not_text_is_400(api):
    from django.core.files.uploadedfile import SimpleUploadedFile

    form = {k: v for k, v in REQUEST_OK.items() if k != "rows"}
    response = api.post(
        "/api/v1/requests/", {**form, "csv": SimpleUploadedFile("x.csv", bytes(range(256)))}, format="multipart"
    )
    assert response.status_code == 400 and "UTF-8" in response.json()["csv"][0]


def test_multipart_json_fields_that_are_not_json_are_400(api):
    response = api.post("/api/v1/send/", {**SEND_OK, "headers": "{not json"}, format="multipart")
    assert response.status_code == 400 and "headers" in response.json()
    response = api.post("/api/v1/requests/", {**REQUEST_OK, "context": "[unclosed"}, format="multipart")
    assert response.status_code == 400 and "context" in response.json()


def test_depth_counts_without_recursion():
    assert depth(1) == 0 and depth([]) == 1 and depth({"a": [1, {"b": []}]}) == 4
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert depth(deep) == MAX_DEPTH + 1  # stops counting past the limit


# --- Anything at all ------------------------------------------------------------------------------

# Text of every kind, lone surrogates and NULs included (hypothesis leaves surrogates out by default).
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
addresses = st.sampled_from(["cy@example.net", "Cy <cy@example.net>", "bad", "", "a@b\r\nBcc: x@y.org"])


def payload(fields, good):
    """Objects that are mostly right: each field kept, dropped, or replaced by junk or a near miss."""
    return st.fixed_dictionaries(
        {},
        optional={name: st.one_of(st.just(good[name]) if name in good else junk, junk, addresses) for name in fields},
    )


SEND_FIELDS = ["to", "cc", "subject", "text", "html", "from", "reply_to", "headers", "attachments"]
REQUEST_FIELDS = [
    "sender", "reply_to", "subject", "text_body", "html_body", "recipient_set", "recipient_params", "rows",
    "skip_bad_rows", "context", "send_at", "public", "draft", "attachments", "csv",
]  # fmt: skip


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=payload(SEND_FIELDS, SEND_OK) | junk)
def test_send_never_answers_500(api, body):
    response = api.generic("POST", "/api/v1/send/", json.dumps(body), content_type="application/json")
    assert response.status_code in (200, 201, 400), response.content[:300]
    if response.status_code == 400:
        assert isinstance(response.json(), dict)


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=payload(REQUEST_FIELDS, REQUEST_OK) | junk)
def test_requests_never_answer_500(api, body):
    response = api.generic("POST", "/api/v1/requests/", json.dumps(body), content_type="application/json")
    assert response.status_code in (201, 400), response.content[:300]
