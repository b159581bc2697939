from datetime import timedelta

import pytest
from django.utils import timezone

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


def decide(physics, policy_name, sender="ann@example.com", raw=None, dns=None):
    """The decision on plain.eml from `sender`, DKIM-signed by the sender's domain when `dns` (a StubDNS) is given."""
    physics.posting_policy = policy_name
    physics.save()
    raw = raw or mail_fixture("plain.eml").replace(b"ann@example.com", sender.encode())
    if dns is not None:
        raw = dns.sign(raw, sender.rpartition("@")[2])
    return policy.decide(parsing.parse(raw), routing.route(LIST), sender)


@pytest.mark.parametrize(
    "policy_name, sender, action, reason",
    [
        ("anyone", "stranger@example.net", "forward", "anyone may post"),
        ("members", "ann@example.com", "forward", "posted by a member (DKIM d=example.com)"),
        ("members", "stranger@example.net", "refuse", "only members may post to this list"),
        ("staff", "boss@example.org", "forward", "posted by staff (DKIM d=example.org)"),
        ("staff", "ann@example.com", "refuse", "only staff may post to this list"),
        ("moderated", "ann@example.com", "hold", "the list is moderated"),
    ],
)
def test_posting_policies(physics, stub_dns, policy_name, sender, action, reason):
    decision = decide(physics, policy_name, sender, dns=stub_dns)
    assert (decision.action, decision.reason) == (action, reason)


@pytest.mark.parametrize("policy_name, sender", [("members", "ann@example.com"), ("staff", "boss@example.org")])
@pytest.mark.parametrize("mode, action", [("hold", "hold"), ("refuse", "refuse"), ("trust", "forward")])
def test_a_claimed_address_is_not_proof(physics, stub_dns, settings, policy_name, sender, mode, action):
    settings.MAILGATE_UNVERIFIED_POSTS = mode
    decision = decide(physics, policy_name, sender)  # unsigned: From and envelope sender both say so
    assert decision.action == action
    if mode == "trust":
        assert "(claimed, not proven: MAILGATE_UNVERIFIED_POSTS=trust)" in decision.reason
    else:
        assert decision.reason == (
            "the sender's address is not proven (no aligned DKIM signature or trusted Authentication-Results)"
        )
        assert decision.detail.startswith(f"{sender} would be ") and "no DKIM signature" in decision.detail


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


# --- Members-only and staff-only lists through the gate: who is proven reaches the members --------------

FORGED = [("members", "ann@example.com"), ("staff", "boss@example.org")]


def forwarded_copies():
    """The forwards in the outbox (each carries the member's bytes; notices are plain text emails)."""
    return TextOfEmail.objects.filter(raw_message__isnull=False)


def post(physics, settings, policy_name, sender, raw=None, envelope_sender=None):
    from mailgate.gate import receive as gate

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    physics.posting_policy = policy_name
    physics.save()
    raw = raw or mail_fixture("plain.eml").replace(b"ann@example.com", sender.encode())
    result = gate.run(raw, LIST, sender if envelope_sender is None else envelope_sender)
    return result, InboundMessage.objects.get(pk=result.inbound_id)


@pytest.mark.parametrize("policy_name, sender", FORGED)
@pytest.mark.parametrize("mode", ["hold", "refuse"])
def test_a_forged_member_or_staff_post_reaches_nobody(physics, stub_dns, settings, policy_name, sender, mode):
    settings.MAILGATE_UNVERIFIED_POSTS = mode
    result, inbound = post(physics, settings, policy_name, sender)
    assert result.code == 0
    assert inbound.status == {"hold": "held", "refuse": "refused"}[mode] and inbound.forwarded_count == 0
    assert inbound.note.startswith(
        "the sender's address is not proven (no aligned DKIM signature or trusted Authentication-Results): "
        f"{sender} would be "
    )
    assert not forwarded_copies().exists()
    if mode == "refuse":  # the notice names the reason, and quotes nothing of the checks' details
        notice = TextOfEmail.objects.get()
        assert notice.to_address == sender and "is not proven" in notice.text
        assert "would be" not in notice.text and "no DKIM signature" not in notice.text


@pytest.mark.parametrize("policy_name, sender", FORGED)
def test_trust_forwards_a_claimed_address_as_before(physics, stub_dns, settings, policy_name, sender):
    settings.MAILGATE_UNVERIFIED_POSTS = "trust"
    result, inbound = post(physics, settings, policy_name, sender)
    assert inbound.status == "forwarded" and "MAILGATE_UNVERIFIED_POSTS=trust" in inbound.note
    assert list(forwarded_copies().values_list("to_address", flat=True)) == ["ann@example.com"]
    assert stub_dns.queries == []


def test_refusing_at_smtp_answers_77_for_an_unproven_post(physics, stub_dns, settings):
    settings.MAILGATE_UNVERIFIED_POSTS, settings.MAILGATE_REFUSE_AT_SMTP = "refuse", True
    result, inbound = post(physics, settings, "members", "ann@example.com")
    assert result.code == 77 and result.message.startswith("refused: the sender's address is not proven")
    assert inbound.status == "refused" and not TextOfEmail.objects.exists()


@pytest.mark.parametrize(
    "policy_name, sender, who", [("members", "ann@example.com", "a member"), ("staff", "boss@example.org", "staff")]
)
def test_a_signed_post_is_forwarded_and_the_note_says_how_it_was_proven(
    physics, stub_dns, settings, policy_name, sender, who
):
    raw = stub_dns.sign(mail_fixture("plain.eml").replace(b"ann@example.com", sender.encode()), sender.split("@")[1])
    result, inbound = post(physics, settings, policy_name, sender, raw=raw)
    assert (result.code, inbound.status, inbound.forwarded_count) == (0, "forwarded", 1)
    assert inbound.note == f"posted by {who} (DKIM d={sender.split('@')[1]})"
    assert list(forwarded_copies().values_list("to_address", flat=True)) == ["ann@example.com"]


def test_a_signed_post_whose_key_lookup_times_out_is_held_without_a_traceback(physics, stub_dns, settings, caplog):
    raw = stub_dns.sign(mail_fixture("plain.eml"), "example.com")
    stub_dns.timeout("t1._domainkey.example.com")
    result, inbound = post(physics, settings, "members", "ann@example.com", raw=raw)
    assert (result.code, inbound.status) == (0, "held")
    assert "DKIM d=example.com: its key could not be looked up (no answer for" in inbound.note
    assert "Traceback" not in inbound.note and not forwarded_copies().exists()
    assert not [r for r in caplog.records if r.exc_info or r.levelname in ("ERROR", "CRITICAL")]


def test_our_mtas_authentication_results_prove_the_poster(physics, stub_dns, settings):
    settings.MAILGATE_TRUSTED_AUTHSERV_IDS = ["mx.lists.example.org"]
    raw = b"Authentication-Results: mx.lists.example.org; dmarc=pass header.from=example.com\n" + mail_fixture(
        "plain.eml"
    )
    result, inbound = post(physics, settings, "members", "ann@example.com", raw=raw)
    assert inbound.status == "forwarded" and forwarded_copies().count() == 1
    assert inbound.note == (
        "posted by a member (Authentication-Results of mx.lists.example.org: dmarc=pass header.from=example.com)"
    )


def test_a_moderator_approves_a_held_unproven_post_through_the_queue(physics, stub_dns, settings):
    from django.contrib.auth import get_user_model

    from mailgate.gate import moderation

    result, inbound = post(physics, settings, "members", "ann@example.com")
    assert inbound.status == "held" and not forwarded_copies().exists()
    assert moderation.approve(inbound, get_user_model().objects.get(username="boss")) == 1
    assert list(forwarded_copies().values_list("to_address", flat=True)) == ["ann@example.com"]
    inbound.refresh_from_db()
    assert inbound.note.startswith("approved by boss (held: the sender's address is not proven")


def test_strangers_and_loops_cost_no_dns_lookup(physics, stub_dns, settings):
    _, stranger = post(physics, settings, "members", "stranger@example.net")
    assert stranger.status == "refused" and stranger.note.startswith("only members may post to this list")
    looped = mail_fixture("plain.eml").replace(b"Subject:", b"X-Loop: physics@lists.example.org\nSubject:")
    looped = stub_dns.sign(looped, "example.com")
    _, loop = post(physics, settings, "members", "ann@example.com", raw=looped)
    assert loop.status == "loop"
    assert stub_dns.queries == []


def test_dbmail_status_says_what_waits_for_a_moderator_and_how_members_get_proven(physics, stub_dns, settings):
    from dbmail.ops import health

    def gate_finding():
        return next(f for f in health.run().findings if f.check == "gate")

    post(physics, settings, "members", "ann@example.com")
    found = gate_finding()
    assert found.state == health.OK and found.details["held_messages"] == 1
    assert "1 message(s) held for moderation, the oldest for 0 seconds" in found.summary
    assert "1 from members whose address is not proven" in found.summary
    assert "MAILGATE_TRUSTED_AUTHSERV_IDS" in found.summary
    settings.MAILGATE_TRUSTED_AUTHSERV_IDS = ["mx.lists.example.org"]  # set: the hint has done its work
    assert "not proven" not in gate_finding().summary
    InboundMessage.objects.update(received_at=timezone.now() - timedelta(hours=25))
    found = gate_finding()
    assert found.state == health.WARNING and "the oldest for 1 day" in found.summary
