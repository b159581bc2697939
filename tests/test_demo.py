"""make run's demo data (dbmail.ops.demo, manage.py dbmail_demo): what README promises a newcomer,
its mail DKIM-signed like a deployment's, and dbmail_status clean."""

import io
import json

import dkim as dkimpy
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from dbmail.models import AuditEvent, DkimKey, MessageRequest, SenderAccount, TextOfEmail, UnsignedMail

from .dnsstub import StubDNS

pytestmark = pytest.mark.django_db(transaction=True)


def load(settings):
    settings.DEBUG = True
    out = io.StringIO()
    call_command("dbmail_demo", stdout=out)
    return out.getvalue().splitlines()


def test_the_demo_has_what_readme_says(settings, smtp_server):
    lines = load(settings)
    assert (
        lines[0] == "created superuser admin / admin"
        and lines[-1] == "created a request to the Students group, due now"
    )
    admin = authenticate(username="admin", password="admin")
    assert admin is not None and admin.is_superuser and admin.email
    users = get_user_model().objects.exclude(username="admin")
    assert {u.groups.get().name for u in users} == {"Teachers", "Students"}
    assert all(u.email and u.is_active for u in users)
    assert SenderAccount.objects.get().address == "office@example.org"
    mail = MessageRequest.objects.get()
    assert mail.status == MessageRequest.Status.QUEUED and mail.creator == admin
    # Due at once: one dbmail_cron run sends one email to each of the five students.
    call_command("dbmail_cron", stdout=io.StringIO(), stderr=io.StringIO())
    sent = TextOfEmail.objects.filter(request=mail)
    assert sent.count() == 5 and {e.status for e in sent} == {"sent"}
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(e.to_address for e in sent)
    # README: the captured mail's links (unsubscribe, web version) lead to the site, and the web version opens.
    link = f"{settings.DBMAIL_SITE_URL}/mail/{mail.public_id}/"
    assert mail.public_id and all(link in e.text and link in e.html for e in sent)
    page = Client().get(link.removeprefix(settings.DBMAIL_SITE_URL))
    assert page.status_code == 200
    # The web version has no recipient: the demo's greeting must still read as a sentence.
    html = page.content.decode()
    assert "Welcome, friend!" in html and "Hello &lt;b&gt;friend&lt;/b&gt;," in html
    assert "View it in your browser" not in html  # a link to itself, empty there


def test_loading_it_again_adds_nothing(settings):
    load(settings)
    assert load(settings) == []
    assert MessageRequest.objects.count() == 1 and get_user_model().objects.count() == 8


def test_it_runs_only_with_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only with DEBUG on"):
        call_command("dbmail_demo")
    assert not get_user_model().objects.exists()
    assert not DkimKey.objects.exists()


def test_the_demo_makes_a_dkim_key_for_its_from_domain_once(settings):
    out = "\n".join(load(settings))
    key = DkimKey.objects.get()
    assert (key.domain, key.algorithm, key.active) == ("example.org", "rsa-sha256", True)
    assert f"created DKIM key {key.selector} for example.org" in out
    assert key.private_key not in out and "PRIVATE" not in out
    assert AuditEvent.objects.filter(action="generate DKIM key", detail="manage.py dbmail_demo").count() == 1
    # Run again (make run does, every time): nothing new, the same key signs.
    assert not any("DKIM" in line for line in load(settings))
    assert DkimKey.objects.get() == key


def test_the_demos_mail_is_signed_and_dbmail_status_is_clean(settings, smtp_server):
    load(settings)
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
