"""Unsubscribe tokens: one recipe for the links and mailtos in mail and for the tokens read back."""

import pytest
from django.urls import reverse

from dbmail.content import tokens

pytestmark = pytest.mark.django_db


def test_a_link_and_its_mailto_carry_the_token_of_token_for_and_it_reads_back_once_registered(settings):
    settings.DBMAIL_SITE_URL = "https://mail.example.org"
    settings.DBMAIL_UNSUBSCRIBE_MAILTO = "unsubscribe@example.org"
    maker = tokens.LinkMaker()
    url, headers = maker.make("Ann@Example.org")
    token = tokens.token_for("ann@example.org")
    assert url == "https://mail.example.org" + reverse("dbmail:unsubscribe", args=[token])
    assert f"mailto:unsubscribe+{token}@example.org" in headers["List-Unsubscribe"]
    assert tokens.address_for(token) is None  # not issued yet
    tokens.register(maker.take_issued())
    assert tokens.address_for(token) == "ann@example.org"


def test_a_token_under_another_key_reads_as_nothing(settings):
    token = tokens.issue("ann@example.org")
    settings.SECRET_KEY = "another-secret-key-for-this-test-only"
    assert tokens.address_for(token) is None
