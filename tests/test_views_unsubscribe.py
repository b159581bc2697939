"""Unsubscribe links: a token per address, GET asks, POST (one-click, no cookies or CSRF) suppresses; bad tokens do nothing."""

import pytest
from django.core import signing
from django.test import Client
from django.urls import reverse

from dbmail.content import tokens as unsubscribe
from dbmail.intake import expand
from dbmail.models import MessageRequest, Suppression

from .factories import MessageRequestFactory, UserFactory

pytestmark = pytest.mark.django_db


def url_for(address):
    return reverse("dbmail:unsubscribe", args=[unsubscribe.issue(address)])


def legacy_token(address):
    """The signed form earlier mail carries (django.core.signing, the address inside)."""
    return signing.Signer(salt="dbmail.unsubscribe").sign_object({"a": address.lower()})


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


def test_a_link_opened_again_says_already_unsubscribed_without_a_second_form(client):
    client.post(url_for("ann@example.org"))
    page = client.get(url_for("Ann@Example.org")).content.decode()
    assert "You are already unsubscribed" in page and 'method="post"' not in page
    assert Suppression.objects.count() == 1


def test_unsubscribing_does_not_deactivate_the_account(client):
    user = UserFactory(username="ann")
    client.post(url_for(user.email))
    user.refresh_from_db()
    assert user.is_active


def flip_last(token):
    return token[:-1] + ("a" if token[-1] != "a" else "b")


@pytest.mark.parametrize(
    "token",
    [
        lambda: flip_last(unsubscribe.issue("ann@example.org")),  # tampered token
        lambda: unsubscribe.token_for("ann@example.org"),  # well made, but never issued
        lambda: legacy_token("ann@example.org")[:-2] + "AA",  # tampered earlier form
        lambda: "x" + legacy_token("ann@example.org"),
        lambda: "garbage",
    ],
)
def test_bad_token_changes_nothing(client, token):
    token = token()
    for method in (client.get, client.post):
        response = method(reverse("dbmail:unsubscribe", args=[token]))
        assert response.status_code == 400
        assert "not valid" in response.content.decode()
    assert not Suppression.objects.exists()


def test_a_stored_token_under_another_key_is_refused(client):
    from dbmail.models import AddressToken

    AddressToken.objects.create(token="a" * unsubscribe.TOKEN_LENGTH, address="ann@example.org")
    assert client.post(reverse("dbmail:unsubscribe", args=["a" * unsubscribe.TOKEN_LENGTH])).status_code == 400
    assert not Suppression.objects.exists()


def test_links_of_earlier_mail_keep_working(client):
    client.post(reverse("dbmail:unsubscribe", args=[legacy_token("Ann@Example.org")]))
    assert Suppression.objects.filter(address="ann@example.org").exists()


def test_tokens_survive_a_key_rotation(client, settings):
    path = url_for("ann@example.org")
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-for-the-test-only"
    client.post(path)
    assert Suppression.objects.filter(address="ann@example.org").exists()


def test_the_token_is_short_lower_case_base32():
    token = unsubscribe.token_for("Ann@Example.org")
    assert token == unsubscribe.token_for("ann@example.org") and len(token) == 26
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert token != unsubscribe.token_for("bob@example.org")


def test_token_from_another_salt_is_refused(client):
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
    token = link.strip("<>").rstrip("/").rsplit("/", 1)[1]
    assert mailto == f"<mailto:unsubscribe+{token}@example.org?subject=unsubscribe>"
    assert unsubscribe.address_for(token) == "ann@example.org"
    path = link.strip("<>").removeprefix("http://localhost:8000")
    client.post(path)
    assert Suppression.objects.filter(address="ann@example.org").exists()
    # The next request to the same people leaves the address out.
    again = MessageRequestFactory(status=MessageRequest.Status.QUEUED)
    expand.expand(expand.claim_request())
    assert not again.emails.exists()


def test_the_pages_promise_what_an_unsubscribe_does(client):
    # An unsubscribe stops bulk mail only; "no more mail from us" told the reader something untrue.
    page = client.get(url_for("ann@example.org")).content.decode()
    assert "all mail" not in page and "mailings" in page and "still arrives" in page
    done = client.post(url_for("ann@example.org")).content.decode()
    assert "no more mail" not in done and "no more of our mailings" in done and "still arrives" in done
    assert Suppression.objects.get().stops == "bulk mail only"
