"""Unsubscribe tokens: one recipe for the links in mail and for the tokens read back."""

from django.urls import reverse

from dbmail.content import tokens


def test_a_link_carries_the_same_token_as_make_token_and_reads_back_to_the_address(settings):
    settings.DBMAIL_SITE_URL = "https://mail.example.org"
    url = tokens.LinkMaker().url("Ann@Example.org")
    token = tokens.make_token("ann@example.org")
    assert url == "https://mail.example.org" + reverse("dbmail:unsubscribe", args=[token])
    assert tokens.read_token(token) == "ann@example.org"
    assert tokens.unsubscribe_url("ann@example.org") == url


def test_a_token_under_another_key_or_tampered_with_reads_as_nothing(settings):
    token = tokens.make_token("ann@example.org")
    assert tokens.read_token(token[:-2] + "xx") is None
    settings.SECRET_KEY = "another-secret-key-for-this-test-only"
    assert tokens.read_token(token) is None
