"""The admin's DKIM keys (made, shown with their record, retired; the private key never shown), DNS check page,
unsigned-mail counts and the suppression list's rule column."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from dbmail import audit
from dbmail.models import DkimKey, SenderAccount, Suppression, UnsignedMail
from dbmail.ops import dkimkeys, dnscheck

from .dnsstub import StubDNS
from .factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def secret_parts(key):
    body = "".join(line for line in key.private_key.splitlines() if not line.startswith("-----"))
    return [p for p in (body[i : i + 40] for i in range(0, len(body) - 40, 40)) if p not in key.public_key] or [body]


def shows_no_private_key(html, key):
    return "PRIVATE KEY" not in html and not any(part in html for part in secret_parts(key))


def test_adding_a_key_makes_one_and_shows_its_record_never_the_private_key(admin_client):
    add = reverse("admin:dbmail_dkimkey_add")
    form = admin_client.get(add).content.decode()
    assert 'name="private_key"' not in form and 'name="public_key"' not in form and 'name="bits"' in form

    response = admin_client.post(
        add, {"domain": "Example.org", "selector": "", "algorithm": "rsa-sha256", "bits": 2048}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    key = DkimKey.objects.get()
    assert key.domain == "example.org" and dkimkeys.key_bits(key) == 2048
    assert [(e.actor_name, e.action) for e in audit.for_target(key)] == [("root", "add (admin)")]

    page = admin_client.get(reverse("admin:dbmail_dkimkey_change", args=[key.pk])).content.decode()
    assert dkimkeys.txt_strings(dkimkeys.txt_value(key))[0] in page  # the record, ready to copy
    assert f"{key.selector}._domainkey.example.org. IN TXT" in page and "signs" in page
    assert shows_no_private_key(page, key)
    listing = admin_client.get(reverse("admin:dbmail_dkimkey_changelist")).content.decode()
    assert key.selector in listing and shows_no_private_key(listing, key)
    assert reverse("admin:dbmail_dns_check") in listing


def test_a_refused_key_is_a_form_error_and_nothing_is_made(admin_client):
    dkimkeys.generate("example.org", selector="one", algorithm="ed25519")
    dkimkeys.generate("example.org", selector="two", algorithm="ed25519")
    add = reverse("admin:dbmail_dkimkey_add")
    response = admin_client.post(add, {"domain": "example.org", "algorithm": "ed25519-sha256", "bits": 2048})
    assert response.status_code == 200 and "already has 2 published keys" in response.content.decode()
    response = admin_client.post(
        add, {"domain": "example.net", "selector": "x y", "algorithm": "ed25519-sha256", "bits": 2048}
    )
    assert "is not a selector" in response.content.decode()
    assert DkimKey.objects.count() == 2


def test_retire_action_and_no_delete(admin_client):
    key = dkimkeys.generate("example.org", selector="old", algorithm="ed25519")
    url = reverse("admin:dbmail_dkimkey_changelist")
    admin_client.post(url, {"action": "retire_keys", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert not key.active and key.retired_at
    assert [(e.actor_name, e.action) for e in audit.for_target(key)] == [("root", "retire DKIM key")]
    assert admin_client.get(reverse("admin:dbmail_dkimkey_delete", args=[key.pk])).status_code == 403


def test_the_dns_check_page_judges_each_sender_domain_with_the_records_to_publish(admin_client, monkeypatch, settings):
    settings.DEFAULT_FROM_EMAIL = "site <noreply@example.org>"
    settings.SERVER_EMAIL = "noreply@example.org"
    SenderAccount.objects.create(address="news@example.net")
    key = dkimkeys.generate("example.org", selector="s1", algorithm="ed25519")
    dns = StubDNS().txt("example.org", "v=spf1 mx -all").publish(key).txt("_dmarc.example.org", "v=DMARC1; p=none")
    monkeypatch.setattr(dnscheck, "make_resolver", lambda: dns)  # nothing leaves the machine

    page = admin_client.get(reverse("admin:dbmail_dns_check")).content.decode()
    assert 'id="domain-example.org"' in page and 'id="domain-example.net"' in page
    assert "p=none only asks for reports" in page
    assert "example.net. IN TXT &quot;v=spf1 mx ~all&quot;" in page  # the record to publish
    assert "dbmail_dkim generate example.net" in page

    one = admin_client.get(reverse("admin:dbmail_dns_check"), {"domain": "example.org"}).content.decode()
    assert 'id="domain-example.org"' in one and 'id="domain-example.net"' not in one
    bad = admin_client.get(reverse("admin:dbmail_dns_check"), {"domain": "no such"}).content.decode()
    assert "is not a domain name" in bad
    changelist = admin_client.get(reverse("admin:dbmail_senderaccount_changelist")).content.decode()
    assert reverse("admin:dbmail_dns_check") in changelist


def test_the_dns_check_page_is_for_staff_with_view_permission(client, monkeypatch):
    monkeypatch.setattr(dnscheck, "make_resolver", lambda: StubDNS())
    url = reverse("admin:dbmail_dns_check")
    assert client.get(url).status_code == 302  # to the admin's login
    staff = UserFactory(username="staff", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_dkimkey"))
    assert client.get(url).status_code == 200


def test_unsigned_mail_counts_are_listed_read_only(admin_client):
    UnsignedMail.objects.create(domain="other.example", day=timezone.localdate(), count=12)
    page = admin_client.get(reverse("admin:dbmail_unsignedmail_changelist")).content.decode()
    assert "other.example" in page and "12" in page
    assert admin_client.get(reverse("admin:dbmail_unsignedmail_add")).status_code == 403


def test_the_suppression_list_shows_what_each_reason_stops(admin_client):
    Suppression.objects.create(address="gone@example.net", reason=Suppression.Reason.BOUNCED)
    Suppression.objects.create(address="later@example.net", reason=Suppression.Reason.UNSUBSCRIBED)
    page = admin_client.get(reverse("admin:dbmail_suppression_changelist")).content.decode()
    assert "all mail" in page and "bulk mail only" in page
