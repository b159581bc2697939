"""Preview and test mail: the same build as expansion, and a test never carries a recipient's unsubscribe link."""

import pytest

from dbmail.content import tokens as unsubscribe
from dbmail.models import MessageRequest
from dbmail.panel import preview

from .factories import MessageRequestFactory, UserFactory

pytestmark = pytest.mark.django_db


def request_for(rows):
    return MessageRequestFactory(
        status=MessageRequest.Status.DRAFT,
        recipient_set="addresses",
        recipient_params={"rows": rows},
        subject="For {{ first_name }} ({{ email }})",
        text_body="{{ unsubscribe_url }}",
    )


def test_index_skips_duplicates_and_bad_addresses():
    mail = request_for([{"email": "a@x.org"}, {"email": "A@x.org"}, {"email": "bad"}, {"email": "b@x.org"}])
    shown = preview.build(mail, 1)
    assert shown.email.to_address == "b@x.org" and not shown.has_next
    assert preview.build(mail, 2) is None


def test_test_mail_uses_my_address_and_my_unsubscribe_link():
    me = UserFactory(username="me")
    mail = request_for([{"email": "ann@x.org", "first_name": "Ann"}])
    rcpt = preview.build(mail).recipient
    email = preview.for_test(mail, rcpt, me)
    assert email.subject == "For Ann (me@example.org)"
    token = email.text.strip().rstrip("/").rsplit("/", 1)[1]
    assert unsubscribe.address_for(token) == "me@example.org"
    assert "ann" not in email.headers["List-Unsubscribe"]


def test_public_version_has_no_recipient_data():
    mail = request_for([{"email": "ann@x.org", "first_name": "Ann"}])
    rendered = preview.public_version(mail)
    assert rendered.subject == "For ()" and rendered.text.strip() == ""
