"""SPF, DKIM and DMARC judged from a stub DNS: every verdict, and the record to publish when one would help."""

import pytest

from dbmail.exceptions import DkimError
from dbmail.ops import dkimkeys, dnscheck
from dbmail.ops.dnscheck import FAIL, PASS, WARN

from .dnsstub import StubDNS

pytestmark = pytest.mark.django_db


def verdict(report, name):
    return next(v for v in report.verdicts if v.check.startswith(name))


@pytest.fixture
def key():
    return dkimkeys.generate("example.org", selector="s1", algorithm="ed25519")


def healthy(key):
    return (
        StubDNS()
        .txt("example.org", "google-site-verification=abc", "v=spf1 mx ip4:192.0.2.10 -all")
        .publish(key)
        .txt("_dmarc.example.org", "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org")
    )


def test_a_healthy_domain_passes_everything(key):
    dns = healthy(key)
    report = dnscheck.check("example.org", resolver=dns)
    assert report.status == PASS and not report.failed
    assert [(v.check, v.status) for v in report.verdicts] == [
        ("SPF", PASS), ("DKIM s1 (signs)", PASS), ("DMARC", PASS)
    ]  # fmt: skip
    assert "mx, ip4:192.0.2.10" in verdict(report, "SPF").detail
    assert ("s1._domainkey.example.org", "TXT") in dns.queries


@pytest.mark.parametrize(
    ("records", "status", "detail"),
    [
        ([], FAIL, "no SPF record"),
        (["v=spf1 mx -all", "v=spf1 a -all"], FAIL, "2 SPF records"),
        (["v=spf1 -all"], FAIL, "names no server"),
        (["v=spf1 mx +all"], FAIL, "any server may send"),
        (["v=spf1 mx all"], FAIL, "any server may send"),
        (["v=spf1 mx ?all"], WARN, "merely neutral"),
        (["v=spf1 include:_spf.example.net"], WARN, "does not end in -all or ~all"),
        (["v=spf1 redirect=_spf.example.net"], WARN, "delegated"),
        (["v=spf1 include:_spf.example.net ~all"], PASS, "ending in ~all"),
        (["v=spf1x mx -all"], FAIL, "no SPF record"),  # not an SPF record at all
    ],
)
def test_spf_verdicts(key, records, status, detail):
    dns = StubDNS().txt("example.org", *records)
    result = verdict(dnscheck.check("example.org", resolver=dns), "SPF")
    assert result.status == status and detail in result.detail
    assert bool(result.publish) == (detail == "no SPF record")
    if result.publish:
        assert result.publish == 'example.org. IN TXT "v=spf1 mx ~all"'


def test_dkim_record_missing_other_revoked_or_doubled(key):
    dns = StubDNS()
    missing = verdict(dnscheck.check("example.org", resolver=dns), "DKIM")
    assert missing.status == FAIL and "no DKIM record at s1._domainkey.example.org" in missing.detail
    assert missing.publish == dkimkeys.zone_line(key)

    other = dkimkeys.new_key_material(key.algorithm)
    dns.txt("s1._domainkey.example.org", f"v=DKIM1; k=ed25519; p={other.public_key}")
    result = verdict(dnscheck.check("example.org", resolver=dns), "DKIM")
    assert result.status == FAIL and "another key than ours" in result.detail and result.publish

    dns.records.clear()
    dns.txt("s1._domainkey.example.org", "v=DKIM1; k=ed25519; p=")
    assert "revokes the key" in verdict(dnscheck.check("example.org", resolver=dns), "DKIM").detail

    dns.records.clear()
    dns.publish(key).txt("s1._domainkey.example.org", f"v=DKIM1; k=ed25519; p={other.public_key}")
    assert verdict(dnscheck.check("example.org", resolver=dns), "DKIM").status == WARN


def test_a_record_with_the_right_key_but_the_wrong_type_fails(key):
    dns = StubDNS().txt("s1._domainkey.example.org", f"v=DKIM1; k=rsa; p={key.public_key}")
    assert verdict(dnscheck.check("example.org", resolver=dns), "DKIM").status == FAIL


def test_both_published_keys_are_checked_during_a_rotation(key):
    new = dkimkeys.rotate("example.org")
    dns = StubDNS().publish(new)
    report = dnscheck.check("example.org", resolver=dns)
    dkim = [(v.check, v.status) for v in report.verdicts if v.check.startswith("DKIM")]
    assert dkim == [(f"DKIM {new.selector} (signs)", PASS), ("DKIM s1 (published, no longer signs)", FAIL)]


def test_a_domain_without_a_key_fails_dkim_with_the_command_that_makes_one():
    result = verdict(dnscheck.check("example.net", resolver=StubDNS()), "DKIM")
    assert result.status == FAIL and "dbmail_dkim generate example.net" in result.detail


@pytest.mark.parametrize(
    ("records", "status", "detail"),
    [
        ([], FAIL, "no DMARC record"),
        (["v=DMARC1; p=none"], WARN, "p=none only asks for reports"),
        (["v=DMARC1; p=reject"], PASS, "policy reject"),
        (["v=DMARC1; rua=mailto:x@example.org"], FAIL, "no valid policy"),
        (["v=DMARC1; p=maybe"], FAIL, "no valid policy"),
        (["v=DMARC1; p=reject", "v=DMARC1; p=none"], FAIL, "2 DMARC records"),
    ],
)
def test_dmarc_verdicts(key, records, status, detail):
    dns = StubDNS().txt("_dmarc.example.org", *records)
    result = verdict(dnscheck.check("example.org", resolver=dns), "DMARC")
    assert result.status == status and detail in result.detail
    if detail == "no DMARC record":
        assert result.publish == '_dmarc.example.org. IN TXT "v=DMARC1; p=none"'


def test_a_subdomain_falls_under_its_parents_dmarc_policy_and_its_sp():
    dns = StubDNS().txt("_dmarc.example.org", "v=DMARC1; p=reject; sp=none")
    result = verdict(dnscheck.check("news.example.org", resolver=dns), "DMARC")
    assert result.status == WARN and result.detail.startswith("_dmarc.example.org: p=none")


def test_a_lookup_that_times_out_is_a_warning_not_a_verdict(key, settings):
    settings.DBMAIL_DNS_TIMEOUT = 0.5
    dns = healthy(key).timeout("example.org").timeout("_dmarc.example.org")
    report = dnscheck.check("example.org", resolver=dns)
    spf, dmarc = verdict(report, "SPF"), verdict(report, "DMARC")
    assert spf.status == dmarc.status == WARN
    assert "no answer for example.org within 0.5 s" in spf.detail
    assert verdict(report, "DKIM").status == PASS


def test_the_real_resolver_takes_the_timeout_setting(settings):
    settings.DBMAIL_DNS_TIMEOUT = 2.5
    resolver = dnscheck.make_resolver()
    assert resolver.lifetime == resolver.timeout == 2.5


def test_a_bad_domain_is_refused():
    with pytest.raises(DkimError, match="is not a domain name"):
        dnscheck.check("not a domain", resolver=StubDNS())
