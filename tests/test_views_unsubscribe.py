"""Unsubscribe links: signed token, GET asks, POST (one-click, no cookies or CSRF) suppresses; bad tokens do nothing."""

import pytest
from django.test import Client
from django.urls import reverse

from dbmail.content import tokens as unsubscribe
from dbmail.intake import expand
from dbmail.models import MessageRequest, Suppression

from .factories import MessageRequestFactory, UserFactory

pytestmark = pytest.mark.django_db


def url_for(address):
    return reverse("dbmail:unsubscribe", args=[unsubscribe.make_token(address)])


def test_get_shows_a_confirmation_and_changes_nothing(client):
    response = client.get(url_for("Ann@Example.org"))
    assert response.status_code == 200
    assert "ann@example.org" in response.content.decode()
    assert 'method="post"' in response.content.decode()
    assert not Suppression.objects.exists()


def test_one_click_post_without_csrf_or_cookies_unsubscribes():
    client = Client(enforce_csrf_checks=True)
    response = client.post(url_for("ann@example.org"), {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    row = Suppression.objects.get()
    assert (row.address, row.reason) == ("ann@example.org", Suppression.Reason.UNSUBSCRIBED)
    client.post(url_for("ann@example.org"))  # a second click is harmless
    assert Suppression.objects.count() == 1


def test_unsubscribing_does_not_deactivate_the_account(client):
    user = UserFactory(username="ann")
    client.post(url_for(user.email))
    user.refresh_from_db()
    assert user.is_active


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # tampered signature
        lambda t: "x" + t,  # tampered payload
        lambda t: "garbage",
    ],
)
def test_bad_token_changes_nothing(client, mangle):
    token = mangle(unsubscribe.make_token("ann@example.org"))
    for method in (client.get, client.post):
        response = method(reverse("dbmail:unsubscribe", args=[token]))
        assert response.status_code == 400
        assert "not valid" in response.content.decode()
    assert not Suppression.objects.exists()


def test_token_from_another_salt_is_refused(client):
    from django.core import signing

    token = signing.Signer(salt="something.else").sign_object({"a": "ann@example.org"}, compress=True)
    assert client.post(reverse("dbmail:unsubscribe", args=[token])).status_code == 400
    assert not Suppression.objects.exists()


def test_request_mail_carries_the_headers_and_their_link_works(client):
    UserFactory(username="ann")
    mail = MessageRequestFactory(status=MessageRequest.Status.QUEUED)
    expand.expand(expand.claim_request())
    email = mail.emails.get()
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link, mailto = email.headers["List-Unsubscribe"].split(", ")
    assert mailto.startswith("<mailto:")
    path = link.strip("<>").removeprefix("http://localhost:8000")
    client.post(path)
    assert Suppression.objects.filter(address="ann@example.org").exists()
    # The next request to the same people leaves the address out.
    again = MessageRequestFactory(status=MessageRequest.Status.QUEUED)
    expand.expand(expand.claim_request())
    assert not again.emails.exists()
