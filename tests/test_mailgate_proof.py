"""Which sender addresses a post proves (mailgate.gate.proof): DKIM verified by the gate, our MTA's
Authentication-Results. Real signatures (dkimpy, test keys) against the stub DNS."""

import dkim as dkimpy
import pytest

from mailgate.gate import parsing, proof

MEMBER = "member@ourorg.example"
LIST = "physics@lists.example.org"
BODY = b"Hello all,\r\n\r\nthe lab moves to room 12 on Thursday.\r\n"


def message(from_value=f"Member <{MEMBER}>", extra=b"", body=BODY):
    head = (
        f"From: {from_value}\r\nTo: Physics <{LIST}>\r\nSubject: Lab on Thursday\r\n"
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <lab-1@ourorg.example>\r\n"
    ).encode()
    return extra + head + b"\r\n" + body


def check(raw, envelope_sender=MEMBER, wanted=(MEMBER,)):
    return proof.check(parsing.parse(raw), envelope_sender, set(wanted))


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_a_signature_of_the_from_domain_proves_from(stub_dns, algorithm):
    proofs = check(stub_dns.sign(message(), "ourorg.example", algorithm=algorithm))
    assert proofs.proven == {MEMBER: "DKIM d=ourorg.example"}
    assert stub_dns.queries == [("t1._domainkey.ourorg.example", "TXT")]


def test_a_parent_domain_aligns_and_a_single_label_or_other_domain_does_not(stub_dns):
    lab = "ann@lab.ourorg.example"
    raw = stub_dns.sign(message(from_value=lab), "ourorg.example")
    assert check(raw, lab, [lab]).proven == {lab: "DKIM d=ourorg.example"}
    assert proof.aligned("ourorg.example", "ourorg.example") and proof.aligned("OurOrg.Example.", "x.ourorg.example")
    assert not proof.aligned("rorg.example", "ourorg.example")  # a dot boundary, not a suffix of characters
    assert not proof.aligned("example", "ourorg.example") and not proof.aligned("", "ourorg.example")
    assert not proof.aligned("x.ourorg.example", "ourorg.example")  # a child does not vouch for its parent


def test_a_signature_of_another_domain_proves_nothing(stub_dns):
    raw = stub_dns.sign(message(), "evil.example")
    assert dkimpy.DKIM(raw).verify(dnsfunc=stub_dns.dkim_lookup)  # it verifies: alignment is what refuses it
    proofs = check(raw)
    assert proofs.proven == {}
    assert "DKIM d=evil.example: not the From domain ourorg.example" in proofs.details()
    assert stub_dns.queries == []  # not even looked up


def test_a_body_changed_after_signing_proves_nothing(stub_dns):
    raw = stub_dns.sign(message(), "ourorg.example").replace(b"room 12", b"room 13")
    proofs = check(raw)
    assert proofs.proven == {} and "DKIM d=ourorg.example: the body was changed after signing" in proofs.details()


def test_a_changed_from_proves_nothing(stub_dns):
    raw = stub_dns.sign(message(from_value="Other <other@ourorg.example>"), "ourorg.example")
    raw = raw.replace(b"Other <other@ourorg.example>", f"Member <{MEMBER}>".encode())
    assert check(raw).proven == {}


def test_a_signature_over_part_of_the_body_proves_nothing(stub_dns):
    key = stub_dns.signing_key("ourorg.example")
    raw = message()
    signer = dkimpy.DKIM(raw, signature_algorithm=key.algorithm)
    field = signer.sign(key.selector, key.domain, key.private_key, length=True, include_headers=[b"from", b"subject"])
    appended = field + raw + b"\r\nP.S. send your password to evil.example\r\n"
    assert dkimpy.DKIM(appended).verify(dnsfunc=stub_dns.dkim_lookup)  # dkimpy accepts it: l= covers the start
    proofs = check(appended)
    assert proofs.proven == {} and "signs only part of the body (l=)" in proofs.details()


@pytest.mark.parametrize(
    "from_value, why",
    [
        (f"Member <{MEMBER}>, Someone <someone@evil.example>", "the From field names several addresses"),
        (f"{MEMBER}, {MEMBER}", "the From field names several addresses"),
    ],
)
def test_a_from_with_several_addresses_proves_nothing(stub_dns, from_value, why):
    raw = stub_dns.sign(message(from_value=from_value), "ourorg.example")
    proofs = check(raw)
    assert proofs.proven == {} and why in proofs.details()


def test_two_from_fields_prove_nothing(stub_dns):
    raw = stub_dns.sign(message(), "ourorg.example")
    proofs = check(raw.replace(b"To: Physics", b"From: someone@evil.example\r\nTo: Physics"))
    assert proofs.proven == {} and "2 From fields" in proofs.details()


def test_an_encoded_comma_in_the_from_name_is_one_address(stub_dns):
    from_value = f"=?utf-8?q?Smith=2C_Ann?= <{MEMBER}>"
    raw = stub_dns.sign(message(from_value=from_value), "ourorg.example")
    assert check(raw).proven == {MEMBER: "DKIM d=ourorg.example"}


def test_a_dns_timeout_proves_nothing_and_raises_nothing(stub_dns):
    raw = stub_dns.sign(message(), "ourorg.example")
    stub_dns.timeout("t1._domainkey.ourorg.example")
    proofs = check(raw)
    assert proofs.proven == {}
    assert "DKIM d=ourorg.example: its key could not be looked up (no answer for t1._domainkey" in proofs.details()


def test_an_unpublished_key_proves_nothing(stub_dns):
    raw = stub_dns.sign(message(), "ourorg.example")
    stub_dns.records.clear()
    assert check(raw).proven == {}


def test_at_most_three_signatures_are_verified(stub_dns):
    raw = message()
    for selector in ("a", "b", "c", "d"):  # each signed by a key whose record is then taken away
        raw = stub_dns.sign(raw, "ourorg.example", selector=selector)
    stub_dns.records.clear()
    valid = stub_dns.sign(raw, "ourorg.example", selector="e")  # the topmost: verified first
    assert check(valid).proven == {MEMBER: "DKIM d=ourorg.example"}
    stub_dns.queries.clear()
    proofs = check(raw)
    assert proofs.proven == {} and len(stub_dns.queries) == proof.MAX_SIGNATURES
    assert "more than 3 aligned DKIM signatures" in proofs.details()


def test_an_unsigned_message_or_an_address_not_wanted_costs_no_lookup(stub_dns):
    assert "no DKIM signature" in check(message()).details()
    raw = stub_dns.sign(message(), "ourorg.example")
    assert check(raw, wanted=["someone@else.example"]).proven == {}
    assert stub_dns.queries == []


def test_a_flood_of_lines_is_not_given_to_the_verifier(stub_dns):
    raw = stub_dns.sign(message(body=b"\r\n" * 200_000), "ourorg.example")
    proofs = check(raw)
    assert proofs.proven == {} and "beyond the parser's limits" in proofs.details() and stub_dns.queries == []


# --- Authentication-Results of our own MTA ----------------------------------------------------------


@pytest.fixture
def our_mta(settings):
    settings.MAILGATE_TRUSTED_AUTHSERV_IDS = ["mx.ourorg.example"]


def with_results(*values, from_value=f"Member <{MEMBER}>"):
    return message(from_value=from_value, extra=b"".join(b"Authentication-Results: " + v + b"\r\n" for v in values))


def test_dmarc_pass_of_our_mta_proves_from(our_mta, stub_dns):
    raw = with_results(b"mx.ourorg.example; dmarc=pass header.from=ourorg.example; dkim=pass header.d=ourorg.example")
    proofs = check(raw)
    assert proofs.proven == {
        MEMBER: "Authentication-Results of mx.ourorg.example: dmarc=pass header.from=ourorg.example"
    }
    assert stub_dns.queries == []  # no DKIM lookup once our MTA has said it


def test_dkim_pass_of_our_mta_proves_from_when_aligned(our_mta):
    aligned = with_results(b"mx.ourorg.example; dkim=pass (good signature) header.i=@ourorg.example")
    assert check(aligned).proven == {
        MEMBER: "Authentication-Results of mx.ourorg.example: dkim=pass header.d=ourorg.example"
    }
    other = with_results(b"mx.ourorg.example; dkim=pass header.d=evil.example; dmarc=fail header.from=ourorg.example")
    assert check(other).proven == {}


def test_the_fields_of_another_authserv_id_are_ignored(our_mta, settings):
    raw = with_results(b"mx.evil.example; dmarc=pass header.from=ourorg.example")
    proofs = check(raw)
    assert proofs.proven == {} and "no Authentication-Results of mx.ourorg.example" in proofs.details()
    settings.MAILGATE_TRUSTED_AUTHSERV_IDS = []  # none trusted: none read
    assert check(with_results(b"mx.ourorg.example; dmarc=pass header.from=ourorg.example")).proven == {}


def test_only_the_topmost_field_of_our_mta_is_read(our_mta):
    real = b"mx.ourorg.example; dkim=none; dmarc=fail header.from=ourorg.example"
    forged = b"mx.ourorg.example; dmarc=pass header.from=ourorg.example"
    assert check(with_results(real, forged)).proven == {}
    # Another server's field above ours does not hide ours.
    assert check(with_results(b"mx.evil.example; dmarc=fail", forged)).proven != {}


def test_an_encoded_word_is_not_our_authserv_id(our_mta):
    raw = with_results(b"=?utf-8?q?mx.ourorg.example?=; dmarc=pass header.from=ourorg.example")
    assert check(raw).proven == {}


def test_spf_pass_proves_the_envelope_sender_and_not_from(our_mta):
    raw = with_results(b"mx.ourorg.example; spf=pass smtp.mailfrom=relay@lists.other.example")
    proofs = check(raw, "relay@lists.other.example", [MEMBER, "relay@lists.other.example"])
    assert proofs.proven == {
        "relay@lists.other.example": "Authentication-Results of mx.ourorg.example: "
        "spf=pass smtp.mailfrom=relay@lists.other.example"
    }
    assert check(raw, "other@ourorg.example", [MEMBER, "other@ourorg.example"]).proven == {}  # another sender
    spf_of_from = with_results(f"mx.ourorg.example; spf=pass smtp.mailfrom={MEMBER}".encode())
    assert check(spf_of_from, "bounces@elsewhere.example").proven == {}  # it says nothing of From
