"""Attack (issue 12, 8): make the site mail its refusal notice, with the attacker's text, to a forged sender.

Notices go to the envelope sender, which anyone can forge. Wanted: they quote
nothing the sender wrote but a short sanitised subject, never answer list
mail or list software, and MAILGATE_REFUSE_AT_SMTP replaces them with an
exit code the MTA turns into its own bounce (tested through mailgate/pipe.py).
"""

import pytest

from dbmail.models import TextOfEmail
from mailgate.gate import policy
from mailgate.gate import receive as gate
from mailgate.models import EmailList, InboundMessage, SenderNotice

from .conftest import subprocess_env
from .factories import EmailListFactory, UserFactory, mail_fixture
from .test_mailgate_gate import run_gate

VICTIM = "victim@example.net"
ATTACK = (
    b"From: BUY-NOW-NAME <victim@example.net>\n"
    b"To: talk@lists.example.org\n"
    b"Subject: =?utf-8?q?Cheap_pills=0D=0ABcc:_x@example.com?= \x1b[31m\xe2\x80\xae" + b"SPAM-PADDING " * 20 + b"\n"
    b"Message-ID: <x@y> Bcc: z@example.com\n"
    b"\n"
    b"BUY-NOW-BODY http://spam.example/\n"
)


def stranger_mail():
    return mail_fixture("plain.eml").replace(b"ann@example.com", b"stranger@example.net")


@pytest.fixture
def topics(db, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    member = UserFactory(username="ann", email="ann@example.com")
    # Any topic: the local part before "-talk" is the sender's to choose.
    return EmailListFactory(
        name="Talk", regex=r"(?P<topic>[a-z-]+)-talk", users=[member], posting_policy=EmailList.Policy.MEMBERS
    )


def test_a_notice_quotes_only_a_short_sanitised_subject(topics):
    result = gate.run(ATTACK, "buy-now-pills-talk@lists.example.org", VICTIM)
    assert result.code == 0
    assert InboundMessage.objects.get().status == InboundMessage.Status.REFUSED
    notice = TextOfEmail.objects.get()
    assert notice.to_address == VICTIM
    everything = " ".join([notice.subject, notice.text, notice.html, *map(str, notice.headers.values())])
    for planted in ("BUY-NOW", "buy-now", "spam.example", "z@example.com", "\x1b", "\u202e", "\r"):
        assert planted not in everything, planted
    assert not any(line.startswith("Bcc") for line in notice.text.splitlines())  # the subject stays on its line
    quoted = next(line for line in notice.text.splitlines() if line.strip().startswith("Subject:"))
    assert len(quoted.split("Subject:", 1)[1].strip()) <= policy.SUBJECT_QUOTED
    assert quoted.split("Subject:", 1)[1].strip().startswith("Cheap pills")
    assert "In-Reply-To" not in notice.headers  # the Message-ID was malformed: not repeated
    assert "Talk" in notice.subject and notice.headers["Auto-Submitted"] == "auto-replied"


@pytest.mark.parametrize(
    "header",
    [
        b"List-Id: Other <other.example.net>",
        b"List-Unsubscribe: <mailto:leave@example.net>",
        b"List-Post: <mailto:other@example.net>",
        b"Precedence: list",
        b"Mailing-List: contact other-help@example.net",
    ],
)
def test_no_notice_answers_list_mail(topics, header):
    raw = stranger_mail().replace(b"Subject:", header + b"\nSubject:", 1)
    assert gate.run(raw, "news-talk@lists.example.org", VICTIM).code == 0
    assert InboundMessage.objects.get().status == InboundMessage.Status.REFUSED
    assert not TextOfEmail.objects.exists() and not SenderNotice.objects.exists()


@pytest.mark.parametrize(
    "sender",
    ["owner-news@example.net", "news-request@example.net", "news-bounces@example.net", "bounce+abc=x@example.net"],
)
def test_no_notice_goes_to_list_software(topics, sender):
    assert gate.run(stranger_mail(), "news-talk@lists.example.org", sender).code == 0
    assert InboundMessage.objects.get().status == InboundMessage.Status.REFUSED
    assert not TextOfEmail.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_refusing_at_smtp_time_answers_77_through_the_pipe_and_sends_nothing(smtp_server):
    EmailListFactory(name="Physics", regex="physics", posting_policy=EmailList.Policy.MEMBERS)
    env = subprocess_env(smtp=smtp_server, MAILGATE_REFUSE_AT_SMTP="true", MAILGATE_UNKNOWN_RECIPIENT="notice")
    proc = run_gate(ATTACK, "--recipient", "physics@lists.example.org", "--sender", VICTIM, env=env, script=True)
    assert proc.returncode == 77
    assert proc.stderr == b"mailgate: refused: only members may post to this list\n" and proc.stdout == b""
    inbound = InboundMessage.objects.get()
    assert inbound.status == InboundMessage.Status.REFUSED and bytes(inbound.raw) == ATTACK
    # No notice for an unknown list either, whatever MAILGATE_UNKNOWN_RECIPIENT says: the MTA bounces it (67).
    proc = run_gate(ATTACK, "--recipient", "nobody@lists.example.org", "--sender", VICTIM, env=env, script=True)
    assert proc.returncode == 67
    assert not TextOfEmail.objects.exists() and not smtp_server.received


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_bad_refuse_at_smtp_value_keeps_the_mail_at_the_mta():
    env = subprocess_env(MAILGATE_REFUSE_AT_SMTP="perhaps")
    proc = run_gate(ATTACK, "--recipient", "physics@lists.example.org", "--sender", VICTIM, env=env, script=True)
    assert proc.returncode == 75 and b"MAILGATE_REFUSE_AT_SMTP" in proc.stderr and b"Traceback" not in proc.stderr
    assert not InboundMessage.objects.exists()


def test_without_refusing_at_smtp_the_same_post_gets_one_notice(topics):
    topics.regex = "physics"
    topics.save()
    assert gate.run(ATTACK, "physics@lists.example.org", VICTIM).code == 0
    assert gate.run(ATTACK, "physics@lists.example.org", VICTIM).code == 0  # within the hour: rate limited
    assert TextOfEmail.objects.get().to_address == VICTIM
    assert SenderNotice.objects.get(address=VICTIM).suppressed_count == 1
