"""`manage.py dbmail_demo`: the demo's data, its mail DKIM-signed like a deployment's, dbmail_status clean."""

import io
import json

import dkim as dkimpy
import pytest
from django.core.management import CommandError, call_command

from dbmail.models import AuditEvent, DkimKey, UnsignedMail

from .dnsstub import StubDNS

pytestmark = pytest.mark.django_db(transaction=True)


def demo(settings):
    settings.DEBUG = True
    out = io.StringIO()
    call_command("dbmail_demo", stdout=out)
    return out.getvalue()


def test_the_demo_makes_a_dkim_key_for_its_from_domain_once(settings):
    out = demo(settings)
    key = DkimKey.objects.get()
    assert (key.domain, key.algorithm, key.active) == ("example.org", "rsa-sha256", True)
    assert f"created DKIM key {key.selector} for example.org" in out
    assert key.private_key not in out and "PRIVATE" not in out
    assert AuditEvent.objects.filter(action="generate DKIM key", detail="manage.py dbmail_demo").count() == 1
    # Run again (make run does, every time): nothing new, the same key signs.
    assert "DKIM" not in demo(settings)
    assert DkimKey.objects.get() == key


def test_the_demo_needs_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        call_command("dbmail_demo")
    assert not DkimKey.objects.exists()


def test_the_demos_mail_is_signed_and_dbmail_status_is_clean(settings, smtp_server):
    demo(settings)
    call_command("dbmail_cron", "--max-seconds", "20", stdout=io.StringIO())  # expands the demo request, sends it
    assert len(smtp_server.received) == 5  # the Students group
    dns = StubDNS()
    dns.publish(DkimKey.objects.get())
    for received in smtp_server.received:
        assert b"DKIM-Signature:" in received.data
        assert dkimpy.verify(received.data, dnsfunc=dns.dkim_lookup)
    assert not UnsignedMail.objects.exists()
    out = io.StringIO()
    call_command("dbmail_status", "--json", stdout=out)  # exits (SystemExit) on anything but ok
    report = json.loads(out.getvalue())
    checks = {f["check"]: f for f in report["checks"]}
    assert checks["dkim"]["state"] == "ok" and "1 domain(s) with a DKIM key" in checks["dkim"]["summary"]
    assert report["state"] == "ok", [f for f in checks.values() if f["state"] != "ok"]
