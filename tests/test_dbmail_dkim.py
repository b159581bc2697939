"""manage.py dbmail_dkim: what each action prints, that no private key is ever printed, and its exit codes."""

import io

import pytest
from django.core.management import CommandError, call_command

from dbmail import audit
from dbmail.models import DkimKey, SenderAccount
from dbmail.ops import dkimkeys, dnscheck

from .conftest import manage
from .dnsstub import StubDNS

pytestmark = pytest.mark.django_db


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("dbmail_dkim", *args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def private_parts(key):
    """Pieces of the private key that would show if any of it were printed (an RSA key holds its public modulus too)."""
    body = "".join(line for line in key.private_key.splitlines() if not line.startswith("-----"))
    parts = [body[i : i + 40] for i in range(0, len(body) - 40, 40)] or [body]
    return [p for p in parts if p not in key.public_key]


def assert_no_private_key(output):
    for key in DkimKey.objects.all():
        assert not any(part in output for part in private_parts(key)), "a private key was printed"
        assert "PRIVATE" not in output


def test_generate_prints_the_record_to_publish_and_never_the_private_key():
    output = run("generate", "example.org", "--selector", "mail")
    key = DkimKey.objects.get()
    assert (key.domain, key.selector, key.algorithm, dkimkeys.key_bits(key)) == (
        "example.org",
        "mail",
        "rsa-sha256",
        2048,
    )
    assert "it signs from now on" in output
    assert dkimkeys.zone_line(key) in output
    assert_no_private_key(output)
    assert [(e.action, e.detail) for e in audit.for_target(key)] == [("generate DKIM key", "manage.py dbmail_dkim")]


def test_generate_ed25519_and_a_bad_request_exits_with_the_reason():
    assert "k=ed25519" in run("generate", "example.org", "--algorithm", "ed25519")
    with pytest.raises(CommandError, match="is not a key size for RSA"):
        run("generate", "example.net", "--bits", "1000")
    with pytest.raises(CommandError, match="is not a domain name"):
        run("generate", "not_a_domain")


def test_list_shows_which_key_signs_which_is_published_and_which_is_retired():
    assert "no DKIM keys" in run("list")
    dkimkeys.generate("example.org", selector="one", algorithm="ed25519")
    dkimkeys.generate("example.org", selector="two", algorithm="ed25519")
    dkimkeys.generate("example.net", selector="three", algorithm="ed25519")
    dkimkeys.retire("example.net", "three")
    lines = {line.split()[1]: line for line in run("list").splitlines()}
    assert " signs " in lines["two"] and " published " in lines["one"] and " retired " in lines["three"]
    assert_no_private_key(run("list"))


def test_rotate_then_retire_then_dns():
    dkimkeys.generate("example.org", selector="old")
    output = run("rotate", "example.org")
    new = dkimkeys.active_keys("example.org")[0]
    assert new.selector != "old" and dkimkeys.zone_line(new) in output and "retire it once" in output
    assert_no_private_key(output)

    records = run("dns", "example.org").splitlines()
    assert records == [dkimkeys.zone_line(new), dkimkeys.zone_line(DkimKey.objects.get(selector="old"))]
    assert "remove its TXT record" in run("retire", "example.org", "old")
    assert run("dns", "example.org").splitlines() == [dkimkeys.zone_line(new)]
    assert [e.action for e in audit.for_target(new)] == ["rotate DKIM key"]
    assert [e.action for e in audit.for_target(DkimKey.objects.get(selector="old"))] == ["retire DKIM key"]
    with pytest.raises(CommandError, match="was already retired"):
        run("retire", "example.org", "old")
    with pytest.raises(CommandError, match="has no published DKIM key"):
        run("dns", "example.net")


def test_check_prints_each_verdict_and_exits_non_zero_when_one_fails(monkeypatch):
    key = dkimkeys.generate("example.org", selector="s1", algorithm="ed25519")
    dns = StubDNS().txt("example.org", "v=spf1 mx -all").publish(key)
    monkeypatch.setattr(dnscheck, "make_resolver", lambda: dns)  # nothing leaves the machine

    with pytest.raises(CommandError, match="DNS check failed: example.org DMARC"):
        run("check", "example.org")
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    output = run("check", "example.org")
    assert "example.org: PASS" in output
    assert "  PASS  SPF:" in output and "  PASS  DKIM s1 (signs):" in output and "  PASS  DMARC:" in output


def test_check_without_a_domain_checks_every_sender_domain(monkeypatch, settings):
    settings.DEFAULT_FROM_EMAIL = "site <noreply@example.org>"
    settings.SERVER_EMAIL = "errors@example.org"
    SenderAccount.objects.create(address="news@example.net")
    dns = StubDNS()
    monkeypatch.setattr(dnscheck, "make_resolver", lambda: dns)
    with pytest.raises(CommandError) as failed:
        run("check")
    assert "example.net SPF" in str(failed.value) and "example.org SPF" in str(failed.value)
    assert {name for name, _ in dns.queries} >= {"example.net", "example.org", "_dmarc.example.net"}


def test_the_command_as_a_child_process_exits_1_with_the_reason_on_stderr():
    done = manage("dbmail_dkim", "retire", "example.org", "nope")
    assert done.returncode == 1 and "has no key with selector 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
