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


@pytest.mark.parametrize("address", ["ann@example.org", " Ann.Smith+news@Example.ORG ", "用户@例子.测试", "x" * 200])
def test_the_token_is_the_documented_recipe_so_links_in_mail_already_sent_keep_working(settings, address):
    # The first 26 characters of the lower-case base32 of HMAC-SHA256(sha256(salt + SECRET_KEY), address).
    import base64
    import hashlib
    import hmac

    key = hashlib.sha256(("dbmail.unsubscribe.address" + settings.SECRET_KEY).encode()).digest()
    digest = hmac.new(key, address.strip().lower().encode(), hashlib.sha256).digest()
    expected = base64.b32encode(digest).decode("ascii")[:26].lower()
    assert tokens.token_for(address) == expected
    assert tokens.LinkMaker().make(address)[0].rstrip("/").endswith(expected)
