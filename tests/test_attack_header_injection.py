"""Attack: header lines of the caller's own making, through characters other than CR and LF.

The email package folds a header value with str.splitlines(), which breaks at
a vertical tab, a form feed, \\x1c-\\x1e, \\x85 and U+2028/9 as well as at CR
and LF; Django's check (BadHeaderError) looks for CR and LF only. So an ASCII
Subject or header of "hi\\vFrom : boss@victim.example" went out as two lines,
the second a From field of the caller's choosing (DKIM-signed with the rest),
and "\\f\\v" as an empty line that ended the header section. A subject with
CR/LF in a mailbox message was taken (201) and the message then stuck in
"sending": Django refused to build it after the answer. Every such value is
now a 400 (dbmail.content.headers.LINE_BREAKS), and nothing is stored or sent.
"""

import base64

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dbmail.intake import outbox
from dbmail.models import TextOfEmail
from dbmail.send import message as sent_message
from dbmail.send import mime
from mailgate.models import Message

from .factories import MailAccountFactory, MailServerProfileFactory, SenderAccountFactory, UserFactory
from .sendingapi import client_for, composer
from .smtpserver import SMTPServer

pytestmark = pytest.mark.django_db

BREAKS = ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r\n"]
FORGED = "From : boss@victim.example"  # a field name with a space before the colon: Postfix reads it as one
ATTACHMENT = {"filename": "a.txt", "content_type": "text/plain", "content": base64.b64encode(b"hi").decode()}


@pytest.fixture
def sending(settings, smtp_server):
    settings.DBMAIL_API_SEND_RATE = "off"
    SenderAccountFactory(address="office@example.org")
    return client_for(composer("ann"))


@pytest.mark.parametrize("attach", [False, True], ids=["lean", "django"])  # attachments: Django's EmailMessage
@pytest.mark.parametrize("field", ["headers", "subject"])
@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_the_sending_api_refuses_every_line_break(
    sending, smtp_server, django_capture_on_commit_callbacks, brk, field, attach
):
    value = f"hi{brk}{FORGED}"
    payload = {"to": "cy@example.net", "subject": "Hello", "text": "Hi."}
    payload.update({"headers": {"X-Note": value}} if field == "headers" else {"subject": value})
    if attach:
        payload["attachments"] = [ATTACHMENT]
    with django_capture_on_commit_callbacks(execute=True):
        response = sending.post("/api/v1/send/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not TextOfEmail.objects.exists() and smtp_server.received == []


def test_an_empty_line_cannot_end_the_header_section(sending, smtp_server, django_capture_on_commit_callbacks):
    payload = {"to": "cy@example.net", "subject": "Hello", "text": "Hi.", "attachments": [ATTACHMENT]}
    payload["headers"] = {"X-Note": "a\f\vInjected body"}
    with django_capture_on_commit_callbacks(execute=True):
        assert sending.post("/api/v1/send/", payload, format="json").status_code == 400
    assert smtp_server.received == []


def test_a_value_without_line_breaks_still_goes_out_as_one_field(
    sending, smtp_server, django_capture_on_commit_callbacks
):
    payload = {"to": "cy@example.net", "subject": "Hello\tthere", "text": "Hi.", "headers": {"X-Note": "a\tb"}}
    with django_capture_on_commit_callbacks(execute=True):
        assert sending.post("/api/v1/send/", payload, format="json").status_code == 201
    (received,) = smtp_server.received
    assert received.message["X-Note"] == "a\tb" and received.message.get_all("From") == [
        "mailsite <noreply@example.org>"
    ]


@pytest.fixture
def mailbox(settings, tmp_path, smtp_server):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    ann = UserFactory(username="ann")
    own = SMTPServer(logins={"ann": "pw"}).start()
    profile = MailServerProfileFactory(smtp_host=own.host, smtp_port=own.port, smtp_auth=True)
    account = MailAccountFactory(owner=ann, profile=profile, address="office@example.org", login="ann", secret="pw")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=ann).key}")
    yield api, account, own
    own.stop()


@pytest.mark.parametrize("brk", BREAKS + ["\r", "\n", "\x00"], ids=repr)
def test_a_mailbox_message_subject_with_a_line_break_is_refused(mailbox, django_capture_on_commit_callbacks, brk):
    api, account, own = mailbox
    data = {"account": account.pk, "to": ["bob@example.net"], "subject": f"hi{brk}{FORGED}", "text": "x"}
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/messages/", data, format="json")
    assert response.status_code == 400, response.content
    assert "subject" in response.json()
    assert not Message.objects.exists() and own.received == []


def test_a_mailbox_message_with_a_plain_subject_is_sent_with_one_from(mailbox, django_capture_on_commit_callbacks):
    api, account, own = mailbox
    data = {"account": account.pk, "to": ["bob@example.net"], "subject": "Quarterly report", "text": "x"}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/messages/", data, format="json").status_code == 201
    (received,) = own.received
    assert received.message["Subject"] == "Quarterly report"
    assert received.message.get_all("From") == ["office@example.org"]


@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_the_writers_refuse_a_line_break_in_a_header_from_code_too(brk):
    # An ad-hoc outbox.enqueue(headers=...) skips the API's check: both writers refuse it, so it is dropped.
    email = outbox.enqueue("cy@example.net", "Hello", text="Hi.", headers={"X-Note": f"hi{brk}{FORGED}"})
    with pytest.raises(ValueError, match="newlines"):
        mime.compose(email, sign=False)
    with pytest.raises(ValueError, match="newlines"):
        sent_message.as_bytes(email, attachments=[("a.txt", b"hi", "text/plain")], sign=False)
