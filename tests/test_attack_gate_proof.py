"""Attacks on proven posters (mailgate.gate.proof, mailgate.gate.auth_results): a signature or an
Authentication-Results field made to prove an address it does not cover. Real signatures (dkimpy,
test keys) against the stub DNS; the outsider holds what any outsider can get: a signature of the
member's domain over some other message (a newsletter, their own account there) to replay and edit."""

import re

import dkim as dkimpy
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailgate.gate import auth_results, parsing, proof

from .conftest import fuzz_settings, time_limit
from .test_mailgate_proof import BODY, MEMBER, check, message

OTHER = "other@ourorg.example"  # the attacker's own mailbox at the member's domain, or a newsletter's


def sign_once(stub_dns, raw, domain="ourorg.example", headers=(b"from", b"to", b"subject")):
    """A signature that signs From once, not oversigned (as Gmail and many others sign)."""
    key = stub_dns.signing_key(domain)
    signer = dkimpy.DKIM(raw, signature_algorithm=key.algorithm)
    return signer.sign(key.selector, key.domain, key.private_key, include_headers=list(headers)) + raw


class Slow(Exception):
    pass


# --- The From the signature covers is the From the gate reads -----------------------------------------------------


def hide_signed_from(signed, hidden):
    """`signed` with `hidden` put just above its From field, so that the gate and dkimpy disagree on the From."""
    cut = signed.index(b"From: ")
    return signed[:cut] + hidden + signed[cut:]


@pytest.mark.parametrize(
    "hidden",
    [
        # dkimpy (and MTAs' filters) split lines at LF only: to them this is one X-A field; to the gate's
        # parser a lone CR ends a line, so it reads a From field and then an empty line (the body starts).
        b"X-A: x\rFrom: " + MEMBER.encode() + b"\r\r\n",
        # the same, the header section ended by a line that is no field ("zz") instead of an empty one
        b"X-A: x\rFrom: " + MEMBER.encode() + b"\rzz\r\n",
    ],
    ids=["cr-cr-lf", "cr-junk"],
)
def test_a_bare_cr_does_not_let_a_signed_message_prove_another_from(stub_dns, hidden):
    attack = hide_signed_from(stub_dns.sign(message(from_value=OTHER), "ourorg.example"), hidden)
    parsed = parsing.parse(attack)
    assert parsed.from_address == MEMBER and parsed.raw_header("from") == [f" {MEMBER}"]  # what the gate reads
    assert dkimpy.DKIM(attack).verify(dnsfunc=stub_dns.dkim_lookup)  # the signature still verifies (over OTHER)
    proofs = check(attack)
    assert proofs.proven == {}
    assert "bare CR" in proofs.details()


def test_a_bare_cr_does_not_let_our_mtas_results_prove_another_from(stub_dns, settings):
    """Our MTA read the signed From (OTHER, aligned: dmarc=pass); the gate must not then read MEMBER."""
    settings.MAILGATE_TRUSTED_AUTHSERV_IDS = ["mx.ourorg.example"]
    results = b"Authentication-Results: mx.ourorg.example; dmarc=pass header.from=ourorg.example\r\n"
    attack = results + hide_signed_from(
        stub_dns.sign(message(from_value=OTHER), "ourorg.example"), b"X-A: x\rFrom: " + MEMBER.encode() + b"\r\r\n"
    )
    assert parsing.parse(attack).from_address == MEMBER
    proofs = check(attack)
    assert proofs.proven == {} and "bare CR" in proofs.details()
    # A bare CR below the header section (in the body) is none of this rule's business.
    honest = results + message(body=b"a bare\rCR in the body\r\n")
    assert check(honest).proven == {MEMBER: "Authentication-Results of mx.ourorg.example: "
                                    "dmarc=pass header.from=ourorg.example"}  # fmt: skip


def test_the_verifiers_from_is_compared_with_the_gates_whatever_made_them_differ(stub_dns, monkeypatch):
    """A second guard, for any other way two parsers may split a header section: with the bare-CR rule
    switched off, the attack above is still refused because dkimpy's From is not the gate's."""
    monkeypatch.setattr(proof, "_BARE_CR", re.compile(rb"(?!)"))
    attack = hide_signed_from(
        stub_dns.sign(message(from_value=OTHER), "ourorg.example"), b"X-A: x\rFrom: " + MEMBER.encode() + b"\r\r\n"
    )
    proofs = check(attack)
    assert proofs.proven == {}
    assert "the verifier reads another From field than the gate" in proofs.details()


def test_an_mbox_from_line_in_the_header_does_not_hide_the_signed_from(stub_dns):
    """dkimpy skips a line starting "From " anywhere in the header section; the gate's parser ends the
    section there. dkimpy then sees both From fields and verifies with an extra From (its bug#644046 rule),
    so even a signature that signs From once fails."""
    signed = sign_once(stub_dns, message(from_value=OTHER))
    attack = hide_signed_from(signed, b"From: " + MEMBER.encode() + b"\r\nFrom " + OTHER.encode() + b"\r\n")
    parsed = parsing.parse(attack)
    assert parsed.from_address == MEMBER and len(parsed.raw_header("from")) == 1
    assert check(attack).proven == {}


def test_a_folded_from_and_an_lf_only_message_are_still_proven(stub_dns):
    """The guard compares values line ends aside: honest folding and LF-only mail keep their proof."""
    folded = stub_dns.sign(message(from_value=f'"Member, Ann"\r\n <{MEMBER}>'), "ourorg.example")
    assert check(folded).proven == {MEMBER: "DKIM d=ourorg.example"}
    lf = stub_dns.sign(message(from_value=f"Member\r\n\t<{MEMBER}>").replace(b"\r\n", b"\n"), "ourorg.example")
    assert b"\r" not in lf and check(lf).proven == {MEMBER: "DKIM d=ourorg.example"}


# --- From values that say one thing and mean another ---------------------------------------------------------------


@pytest.mark.parametrize(
    "from_value",
    [
        f"=?utf-8?q?{MEMBER.replace('@', '=40')}?= <attacker@evil.example>",  # a member's address as the name
        f'"{MEMBER}" <attacker@evil.example>',
        f"{MEMBER} <attacker@evil.example>",  # unquoted, "@" and all
        f"attacker@evil.example ({MEMBER})",  # in a comment
        f"({MEMBER}) attacker@evil.example",
        f"=?utf-8?q?x=2C_{MEMBER.replace('@', '=40')}=2C?= <attacker@evil.example>",  # an encoded list
        f"<attacker@evil.example>, =?utf-8?q?{MEMBER.replace('@', '=40')}?=",
        f"{MEMBER})<attacker@evil.example>",  # the getaddresses parsing quirk of CVE-2023-27043
    ],
)
def test_a_members_address_written_around_anothers_proves_nothing(stub_dns, from_value):
    """Signed by the attacker's own domain: whatever the gate reads as the address, d= must align with it."""
    raw = stub_dns.sign(message(from_value=from_value), "evil.example")
    parsed = parsing.parse(raw)
    proofs = proof.check(parsed, "attacker@evil.example", {MEMBER, parsed.from_address})
    assert MEMBER not in proofs.proven


@pytest.mark.parametrize(
    "from_value",
    [
        f"<=?utf-8?q?{MEMBER.replace('@', '=40')}?=>",  # raw: no address at all
        f"=?utf-8?q?{MEMBER.replace('@', '=40')}?= <{OTHER}>",  # raw: OTHER; decoded: MEMBER first
    ],
)
def test_an_encoded_word_cannot_make_the_two_readings_of_from_differ(stub_dns, from_value):
    """The decoded From names MEMBER (what policy looks up), the raw one something else: nothing is proven."""
    raw = stub_dns.sign(message(from_value=from_value), "ourorg.example")
    parsed = parsing.parse(raw)
    assert parsed.from_address == MEMBER  # what policy looks up as the member
    proofs = check(raw)
    assert proofs.proven == {} and "the From field is unreadable" in proofs.details()


def test_domain_proof_covers_every_mailbox_of_the_domain(stub_dns):
    """DKIM proves the domain, not the mailbox (as DMARC and Sympa's DKIM authentication read it):
    a signature of ourorg.example proves any From address at ourorg.example (docs/mta.md says so)."""
    raw = stub_dns.sign(message(from_value=OTHER), "ourorg.example")
    assert check(raw, OTHER, [OTHER]).proven == {OTHER: "DKIM d=ourorg.example"}


def test_an_upper_case_or_international_signing_domain(stub_dns):
    assert check(stub_dns.sign(message(), "OurOrg.Example")).proven == {MEMBER: "DKIM d=ourorg.example"}
    idn = "ann@bücher.example"
    raw = stub_dns.sign(message(from_value=f"Ann <{idn}>"), "xn--bcher-kva.example")
    assert check(raw, idn, [idn]).proven == {idn: "DKIM d=xn--bcher-kva.example"}  # the A-label of From's domain
    lookalike = stub_dns.sign(message(), "xn--urorg-6ve.example")  # "оurorg" with a Cyrillic o
    assert check(lookalike).proven == {}


def test_a_signature_whose_i_is_another_domain_proves_nothing_and_raises_nothing(stub_dns):
    """dkimpy signs i=@xourorg.example for d=ourorg.example (a suffix of characters) but will not verify it."""
    key = stub_dns.signing_key("ourorg.example")
    raw = message()
    signer = dkimpy.DKIM(raw, signature_algorithm=key.algorithm)
    field = signer.sign(key.selector, key.domain, key.private_key, identity=b"@xourorg.example")
    proofs = check(field + raw)
    assert proofs.proven == {} and "ValidationError" in proofs.details()


# --- Authentication-Results ---------------------------------------------------------------------------------------


@pytest.fixture
def our_mta(settings):
    settings.MAILGATE_TRUSTED_AUTHSERV_IDS = ["mx.ourorg.example"]


def with_results(*values, from_value=f"Member <{MEMBER}>", body=BODY):
    fields = b"".join(b"Authentication-Results: " + v + b"\r\n" for v in values)
    return message(from_value=from_value, extra=fields, body=body)


PASS = b"; dmarc=pass header.from=ourorg.example"


@pytest.mark.parametrize(
    "authserv_id",
    [
        b'"mx.ourorg.example"',  # a quoted string
        b'mx.ourorg.exa""mple',  # quotes joined to the word
        b'mx.ourorg.example""',  # an empty quoted string after it
        b"(our mx) mx.ourorg.example",  # a comment before it
        b"\r\n (x) mx.ourorg.example",
    ],
)
def test_an_authserv_id_written_past_the_mtas_header_check_proves_nothing(our_mta, authserv_id):
    """docs/mta.md's Postfix header check removes fields that start with our id written plainly; a sender's
    field with the id quoted or behind a comment survives it, and must then not read as ours."""
    assert auth_results.parse((authserv_id + PASS).decode()).authserv_id == "mx.ourorg.example"
    proofs = check(with_results(authserv_id + PASS))
    assert proofs.proven == {} and "not written plainly" in proofs.details()
    # Being the topmost of ours it still hides a field below it.
    assert check(with_results(authserv_id + b"; dmarc=fail", b"mx.ourorg.example" + PASS)).proven == {}


@pytest.mark.parametrize("written", [b"mx.ourorg.example", b"MX.OurOrg.Example", b"\r\n\tmx.ourorg.example (Postfix)"])
def test_our_id_written_plainly_in_any_case_or_folded_is_read(our_mta, written):
    assert check(with_results(written + PASS)).proven != {}


@pytest.mark.parametrize("version, proven", [(b"", True), (b" 1", True), (b" 2", False), (b" 1.5", False)])
def test_only_version_1_is_read(our_mta, version, proven):
    """RFC 8601 defines version 1 only; what another version means is unknown, so it proves nothing."""
    proofs = check(with_results(b"mx.ourorg.example" + version + PASS))
    assert (proofs.proven != {}) is proven


@pytest.mark.parametrize(
    "value",
    [
        b"mx.ourorg.example; dmarc=pass header.from=other.example",  # results for another From domain
        b"mx.ourorg.example; dmarc=fail (dmarc=pass header.from=ourorg.example) header.from=ourorg.example",
        b"mx.ourorg.example; dmarc=fail header.from=ourorg.example (; dmarc=pass header.from=ourorg.example)",
        b'mx.ourorg.example; dmarc=fail reason="; dmarc=pass header.from=ourorg.example"',
        b"mx.ourorg.example; dmarc=pass header.from=rorg.example",  # a suffix of characters, not a parent
        b"mx.ourorg.example; dkim=pass header.d=example",  # a single label never aligns
        b"mx.ourorg.example; dkim=pass header.d=lab.ourorg.example",  # a child does not vouch for its parent
        b"mx.ourorg.example; dkim=pass header.i=@evil.example",
        b"mx.ourorg.example; spf=pass smtp.mailfrom=" + MEMBER.encode(),  # SPF is for the envelope sender
    ],
)
def test_results_for_something_else_prove_nothing(our_mta, value):
    assert check(with_results(value), envelope_sender="bounce@elsewhere.example").proven == {}


def test_results_below_the_header_section_or_in_an_attached_message_are_not_read(our_mta):
    attached = (
        b"Content-Type: multipart/mixed; boundary=b\r\nMIME-Version: 1.0\r\n\r\n--b\r\n"
        b"Content-Type: message/rfc822\r\n\r\nAuthentication-Results: mx.ourorg.example" + PASS + b"\r\n"
        b"From: " + MEMBER.encode() + b"\r\n\r\nhi\r\n--b--\r\n"
    )
    raw = message(body=b"Authentication-Results: mx.ourorg.example" + PASS + b"\r\n")
    assert check(raw).proven == {}
    head, _, body = message().partition(b"\r\n\r\n")
    assert check(head + b"\r\n" + attached).proven == {}


def test_a_member_of_another_domain_is_not_proven_by_our_domains_pass(our_mta):
    ann = "ann@partner.example"
    raw = with_results(b"mx.ourorg.example" + PASS, from_value=ann)
    assert check(raw, ann, [ann]).proven == {}


def test_huge_and_malformed_results_fields_cost_little(our_mta):
    nasty = [
        b"mx.ourorg.example; " + b"(" * 16_000,  # a comment never closed
        b"mx.ourorg.example; " + b'"' * 16_000,
        b"mx.ourorg.example; " + b"dmarc=pass " * 1_500,
        b"mx.ourorg.example; " + b"a=b; " * 3_000,
        b"mx.ourorg.example; " + b"\\(" * 8_000,
        b"mx.ourorg.example; dmarc=pass header.from=" + b"x." * 8_000 + b"ourorg.example",
        b"mx.ourorg.example" + b" " * 100_000 + PASS,  # past the 16 KiB read: the pass is never seen
    ]
    with time_limit(5, Slow):
        for value in nasty:
            proofs = check(with_results(value))
            assert proofs.proven == {}
        many = with_results(*[b"mx.evil.example; " + b"(x" * 5_000] * 100, b"mx.ourorg.example" + PASS)
        assert check(many).proven == {}  # the 101st field of a name is past what is read: ours is not found


# --- DNS answers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        "v=DKIM1; k=ed25519; p=" + "A" * 60_000,  # huge
        "v=DKIM1; k=rsa; p=notbase64!!",
        "v=DKIM1; k=ed25519; p=",  # revoked
        "\x00\x01\x02 garbage ;;;===",
        "v=DKIM1; k=unknown; p=AAAA",
        "v=DKIM1; h=md5; k=rsa; p=AAAA",
    ],
)
def test_huge_or_malformed_key_records_prove_nothing_and_raise_nothing(stub_dns, record):
    raw = stub_dns.sign(message(), "ourorg.example")
    stub_dns.records["t1._domainkey.ourorg.example"] = [[record[i : i + 255] for i in range(0, len(record), 255)]]
    with time_limit(5, Slow):
        proofs = check(raw)
    assert proofs.proven == {} and proofs.failures


# --- Through the gate ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_replayed_signature_of_the_members_domain_does_not_post_as_the_member(stub_dns, settings):
    """Any mail signed by example.com (the attacker's own there, a newsletter) replayed with a bare CR: held
    on a members-only list, never forwarded. Before: forwarded as "posted by a member (DKIM d=example.com)"."""
    from dbmail.models import TextOfEmail
    from mailgate.gate import receive as gate
    from mailgate.models import EmailList, InboundMessage

    from .factories import EmailListFactory, UserFactory, mail_fixture

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    EmailListFactory(
        name="Physics", regex="physics", users=[UserFactory(username="ann", email="ann@example.com")],
        posting_policy=EmailList.Policy.MEMBERS,
    )  # fmt: skip
    theirs = mail_fixture("plain.eml").replace(b"Ann Smith <ann@example.com>", b"news@example.com")
    signed = stub_dns.sign(theirs.replace(b"\r\n", b"\n"), "example.com")
    attack = hide_signed_from(signed, b"X-A: x\rFrom: Ann Smith <ann@example.com>\r\r\n")
    result = gate.run(attack, "physics@lists.example.org", "ann@example.com")
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert (result.code, inbound.status) == (0, "held"), inbound.note
    assert "bare CR" in inbound.note
    assert not TextOfEmail.objects.filter(raw_message__isnull=False).exists()


# --- Fuzzed: whatever is written around a signed From, it proves only that From --------------------------------

_CONTENT = st.sampled_from(
    [b"X-A: x", b"From: " + MEMBER.encode(), b"FROM:<" + MEMBER.encode() + b">", b"From " + MEMBER.encode(), b"zz",
     b" folded", b"", b"Subject: \xff\x00"]
)  # fmt: skip
_LINES = st.lists(st.tuples(_CONTENT, st.sampled_from([b"\r\n", b"\n", b"\r"])), max_size=5)


@fuzz_settings(400)
@given(before=_LINES, after=_LINES, at_top=st.booleans())
@example(before=[(b"X-A: x", b"\r"), (b"From: " + MEMBER.encode(), b"\r"), (b"", b"\r\n")], after=[], at_top=False)
def test_fuzzed_lines_around_a_signed_from_never_prove_another(stub_dns, before, after, at_top):
    """Lines of fields, continuations, mbox lines and junk, ended by CRLF, LF or a lone CR, written above the
    message or around its signed From (OTHER): MEMBER is never proven."""
    signed = stub_dns.sign(message(from_value=OTHER), "ourorg.example")
    cut = signed.index(b"From: ")
    line_end = signed.index(b"\r\n", cut) + 2
    insert_at = 0 if at_top else cut
    lines = [b"".join(line) for line in before], [b"".join(line) for line in after]
    raw = signed[:insert_at] + b"".join(lines[0]) + signed[insert_at:line_end] + b"".join(lines[1]) + signed[line_end:]
    proofs = check(raw, OTHER, [MEMBER, OTHER])
    assert MEMBER not in proofs.proven, (raw[:600], proofs)
