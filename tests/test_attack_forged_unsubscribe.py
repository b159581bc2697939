"""Attack: unsubscribing someone else by mail, with a forged envelope sender.

Ann and Mallory both get the newsletter. Mallory writes to the unsubscribe
address with `MAIL FROM:<ann@example.net>`, as anyone can. The gate runs as
the MTA runs it (mailgate/pipe.py in a child process, the message on stdin).
Only the token in `unsubscribe+<token>@` names an address: without one
nothing changes; with the one from Mallory's own mail, Mallory is the one
unsubscribed; a tampered token changes nothing.
"""

import re

import pytest

from dbmail.content import tokens
from dbmail.intake import expand
from dbmail.models import MessageRequest, Suppression
from mailgate.models import InboundMessage

from .conftest import subprocess_env
from .factories import MessageRequestFactory, UserFactory
from .test_mailgate_gate import run_gate

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ANN, MALLORY = "ann@example.net", "mallory@example.com"


@pytest.fixture
def mailtos(settings):
    """The mailto of each one's newsletter, as expansion wrote it into List-Unsubscribe."""
    settings.DBMAIL_UNSUBSCRIBE_MAILTO = "unsubscribe@example.org"
    UserFactory(username="ann", email=ANN)
    UserFactory(username="mallory", email=MALLORY)
    MessageRequestFactory(status=MessageRequest.Status.QUEUED)
    expand.expand(expand.claim_request())
    found = {}
    for email in MessageRequest.objects.get().emails.all():
        found[email.to_address] = re.search(r"<mailto:([^?>]+)", email.headers["List-Unsubscribe"]).group(1)
    return found


@pytest.fixture
def site_server(smtp_server):
    """Where the gate's own notices go (the site's EMAIL_* server)."""
    return smtp_server


def forged(site_server, recipient, sender=ANN, subject="unsubscribe"):
    """Mail as Mallory writes it: From and envelope sender are Ann's (unless said otherwise)."""
    raw = f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\nMessage-ID: <x@example.com>\r\n\r\nstop\r\n"
    return run_gate(
        raw.encode(),
        "--recipient",
        recipient,
        "--sender",
        sender,
        script=True,
        env=subprocess_env(smtp=site_server, DBMAIL_UNSUBSCRIBE_MAILTO="unsubscribe@example.org"),
    )


def test_the_mailto_carries_a_lower_case_token_that_fits_a_local_part(mailtos):
    local, _, domain = mailtos[ANN].partition("@")
    assert domain == "example.org" and len(local) <= 64
    assert re.fullmatch(r"unsubscribe\+[a-z2-7]{26}", local)
    assert mailtos[ANN] != mailtos[MALLORY]


@pytest.mark.parametrize("subject", ["unsubscribe", f"unsubscribe {ANN}"])
def test_a_forged_sender_without_a_token_unsubscribes_nobody(mailtos, site_server, subject):
    proc = forged(site_server, "unsubscribe@example.org", subject=subject)

    assert proc.returncode == 0, proc.stderr
    assert not Suppression.objects.exists()
    assert "nothing changed" in InboundMessage.objects.get().note
    # Ann herself gets a link to confirm, which Mallory never sees.
    [notice] = site_server.received
    assert notice.rcpt_tos == [ANN] and "/unsubscribe/" in notice.message.get_content()


def test_a_token_from_someone_elses_mail_unsubscribes_the_tokens_address_not_the_sender(mailtos, site_server):
    proc = forged(site_server, mailtos[MALLORY].upper())  # MTAs may fold the case of a local part

    assert proc.returncode == 0, proc.stderr
    assert list(Suppression.objects.values_list("address", flat=True)) == [MALLORY]
    assert site_server.received == []


@pytest.mark.parametrize("tamper", [lambda t: t[:-1] + ("a" if t[-1] != "a" else "b"), lambda t: t[:-1]])
def test_a_tampered_token_changes_nothing(mailtos, site_server, tamper):
    local, _, domain = mailtos[ANN].partition("@")
    base, _, token = local.partition("+")
    assert tokens.address_for(token) == ANN

    proc = forged(site_server, f"{base}+{tamper(token)}@{domain}", sender=MALLORY)

    assert proc.returncode == 0, proc.stderr
    assert not Suppression.objects.exists()
    assert "a token that is not valid: nothing changed" in InboundMessage.objects.get().note
