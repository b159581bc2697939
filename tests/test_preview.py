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


def test_once_sent_the_page_shows_the_stored_emails_not_todays_audience():
    from dbmail.intake import expand
    from dbmail.models import Suppression

    mail = request_for([{"email": "ann@x.org", "first_name": "Ann"}, {"email": "bob@x.org", "first_name": "Bob"}])
    mail.status = MessageRequest.Status.QUEUED
    mail.save()
    expand.expand(expand.claim_request())
    mail.refresh_from_db()
    Suppression.objects.create(address="ann@x.org")  # Ann unsubscribes after the send
    first = preview.for_page(mail, 0)
    assert first.sent and first.email.pk is not None
    assert first.email.to_address == "ann@x.org" and first.email.subject == "For Ann (ann@x.org)"
    assert first.has_next
    second = preview.for_page(mail, 1)
    assert second.email.to_address == "bob@x.org" and not second.has_next
    assert preview.for_page(mail, 0, address="bob").index == 1
    assert preview.for_page(mail, 5) is None
    # Rebuilt from today's audience, "recipient 1" would now be Bob:
    assert preview.build(mail, 0).email.to_address == "bob@x.org"


def test_before_sending_the_page_rebuilds_the_mail():
    mail = request_for([{"email": "ann@x.org", "first_name": "Ann"}])
    shown = preview.for_page(mail, 0)
    assert not shown.sent and shown.email.pk is None
