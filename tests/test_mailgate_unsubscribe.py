"""Unsubscribing by mail: the token in unsubscribe+<token>@ names the address; nothing else does."""

from datetime import timedelta

import pytest

from dbmail.content import tokens
from dbmail.models import Suppression, TextOfEmail
from mailgate.gate import receive as gate
from mailgate.gate import unsubscribe_mail
from mailgate.models import InboundMessage, SenderNotice

pytestmark = pytest.mark.django_db


def mail(subject="unsubscribe", sender="ann@example.net", extra=""):
    return f"From: {sender}\r\nTo: unsubscribe@example.org\r\nSubject: {subject}\r\n{extra}\r\nplease\r\n".encode()


@pytest.fixture(autouse=True)
def mailto(settings):
    settings.DBMAIL_UNSUBSCRIBE_MAILTO = "unsubscribe@example.org"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def test_the_token_unsubscribes_its_address_whoever_sends_it():
    recipient = tokens.mailto_address(tokens.issue("Ann@Example.net"))
    result = gate.run(mail(sender="forwarder@example.com"), recipient.upper(), "forwarder@example.com")
    assert result.code == 0
    row = Suppression.objects.get()
    assert (row.address, row.reason) == ("ann@example.net", "unsubscribed")
    assert (
        "unsubscribed ann@example.net (its token; sent by forwarder@example.com)" in InboundMessage.objects.get().note
    )


@pytest.mark.parametrize(
    "recipient", ["unsubscribe@example.org", "unsubscribe+@example.org", "unsubscribe+not-a-token@example.org"]
)
def test_without_a_valid_token_nothing_changes_and_the_sender_gets_a_link(recipient):
    result = gate.run(mail("unsubscribe ann@example.net", "ann@example.net"), recipient, "ann@example.net")
    assert result.code == 0
    assert not Suppression.objects.exists()
    notice = TextOfEmail.objects.get()
    assert notice.to_address == "ann@example.net" and notice.headers["Auto-Submitted"] == "auto-replied"
    token = next(w for w in notice.text.split() if "/unsubscribe/" in w).rstrip("/").rsplit("/", 1)[1]
    assert tokens.address_for(token) == "ann@example.net"  # the link for the sender's own address only
    assert "nothing changed" in InboundMessage.objects.get().note


def test_the_link_by_mail_is_rate_limited_and_never_sent_to_automatic_mail(settings):
    gate.run(mail(), "unsubscribe@example.org", "ann@example.net")
    gate.run(mail(), "unsubscribe@example.org", "ann@example.net")
    assert TextOfEmail.objects.count() == 1 and SenderNotice.objects.get().suppressed_count == 1
    gate.run(
        mail(sender="bob@example.net", extra="Auto-Submitted: auto-replied\r\n"),
        "unsubscribe@example.org",
        "bob@example.net",
    )
    gate.run(mail(sender=""), "unsubscribe@example.org", "")
    assert TextOfEmail.objects.count() == 1
    SenderNotice.objects.update(last_sent_at=SenderNotice.objects.get().last_sent_at - timedelta(hours=2))
    gate.run(mail(), "unsubscribe@example.org", "ann@example.net")
    assert TextOfEmail.objects.count() == 2 and not Suppression.objects.exists()


def test_only_the_configured_address_and_its_extensions_are_unsubscribe_addresses():
    assert unsubscribe_mail.is_unsubscribe_address("Unsubscribe@Example.org")
    assert unsubscribe_mail.is_unsubscribe_address("unsubscribe+abc@example.org")
    for other in ("unsubscribe@example.com", "unsubscribex@example.org", "x+unsubscribe@example.org", ""):
        assert not unsubscribe_mail.is_unsubscribe_address(other)
