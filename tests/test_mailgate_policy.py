from datetime import timedelta

import pytest

from dbmail.models import SenderAccount, TextOfEmail
from mailgate.gate import parsing, policy, routing
from mailgate.models import EmailList, InboundMessage, SenderNotice

from .factories import EmailListFactory, UserFactory, mail_fixture

pytestmark = pytest.mark.django_db
LIST = "physics@lists.example.org"


@pytest.fixture
def physics():
    member = UserFactory(username="ann", email="ann@example.com")
    UserFactory(username="boss", email="boss@example.org", is_staff=True)
    return EmailListFactory(name="Physics", regex="physics", users=[member])


def decide(physics, policy_name, sender="ann@example.com", raw=None):
    physics.posting_policy = policy_name
    physics.save()
    raw = raw or mail_fixture("plain.eml").replace(b"ann@example.com", sender.encode())
    return policy.decide(parsing.parse(raw), routing.route(LIST), sender)


@pytest.mark.parametrize(
    "policy_name, sender, action",
    [
        ("anyone", "stranger@example.net", "forward"),
        ("members", "ann@example.com", "forward"),
        ("members", "stranger@example.net", "refuse"),
        ("staff", "boss@example.org", "forward"),
        ("staff", "ann@example.com", "refuse"),
        ("moderated", "ann@example.com", "hold"),
    ],
)
def test_posting_policies(physics, policy_name, sender, action):
    assert decide(physics, policy_name, sender).action == action


def test_loops_and_automatic_mail_are_stopped_before_the_policy(physics):
    looped = mail_fixture("plain.eml").replace(b"Subject:", b"X-Loop: physics@lists.example.org\nSubject:")
    assert decide(physics, "anyone", raw=looped).action == "loop"
    other_list = mail_fixture("plain.eml").replace(b"Subject:", b"X-Loop: chem@lists.example.org\nSubject:")
    assert decide(physics, "anyone", raw=other_list).action == "forward"
    for header in (b"Auto-Submitted: auto-generated", b"Precedence: junk", b"X-Autoreply: yes"):
        raw = mail_fixture("plain.eml").replace(b"Subject:", header + b"\nSubject:")
        assert decide(physics, "anyone", raw=raw).action == "loop", header
    explicit_no = mail_fixture("plain.eml").replace(b"Subject:", b"Auto-Submitted: no\nSubject:")
    assert decide(physics, "anyone", raw=explicit_no).action == "forward"
    assert policy.decide(parsing.parse(mail_fixture("plain.eml")), routing.route(LIST), "").action == "loop"


def inbound_from(sender, raw=None):
    raw = raw or mail_fixture("plain.eml")
    return InboundMessage.objects.create(
        envelope_sender=sender,
        envelope_recipient=LIST,
        raw=raw,
        subject="Lab on Thursday",
        message_id="<plain-1@example.com>",
    )


@pytest.mark.parametrize(
    "sender",
    [
        "",
        "MAILER-DAEMON@example.net",
        "noreply@example.org",
        LIST,
        "bounces+x.y@lists.example.org",
        "office@example.org",
        "not an address",
    ],
)
def test_notices_never_go_to_null_or_own_addresses(physics, settings, sender):
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"
    SenderAccount.objects.create(address="office@example.org")
    inbound = inbound_from(sender)
    assert policy.notice_refused(inbound, parsing.parse(inbound.raw), "members only") is None
    assert not TextOfEmail.objects.exists()


def test_notices_are_rate_limited_per_address(physics, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    inbound = inbound_from("stranger@example.net")
    parsed = parsing.parse(inbound.raw)
    first = policy.notice_refused(inbound, parsed, "only members may post to this list")
    assert first.to_address == "stranger@example.net"
    assert "only members may post to this list" in first.text and first.headers["Auto-Submitted"] == "auto-replied"
    assert first.headers["In-Reply-To"] == "<plain-1@example.com>"
    assert policy.notice_refused(inbound, parsed, "again") is None
    notice = SenderNotice.objects.get(address="stranger@example.net")
    assert (notice.sent_count, notice.suppressed_count) == (1, 1)
    SenderNotice.objects.update(last_sent_at=notice.last_sent_at - timedelta(hours=2))
    assert policy.notice_refused(inbound, parsed, "later") is not None
    # A moderator's rejection is not rate limited.
    assert policy.notice_rejected(inbound, parsed) is not None
    assert TextOfEmail.objects.count() == 3


def test_no_notice_in_answer_to_automatic_mail(physics):
    inbound = inbound_from("ann@example.com", mail_fixture("auto_reply.eml"))
    assert policy.notice_refused(inbound, parsing.parse(inbound.raw), "x") is None


def test_refused_mail_gets_a_notice_through_the_gate(physics, settings):
    from mailgate.gate import receive as gate

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    physics.posting_policy = EmailList.Policy.MEMBERS
    physics.save()
    raw = mail_fixture("plain.eml").replace(b"ann@example.com", b"stranger@example.net")
    result = gate.run(raw, LIST, "stranger@example.net")
    assert result.code == 0
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert inbound.status == "refused" and inbound.note == "only members may post to this list"
    assert TextOfEmail.objects.get().to_address == "stranger@example.net"
