import pytest
from django.urls import reverse

from dbmail.models import TextOfEmail
from mailgate.gate import receive as gate
from mailgate.models import Bounce, EmailList, InboundMessage

from .factories import EmailListFactory, UserFactory, mail_fixture

LIST = "physics@lists.example.org"
pytestmark = pytest.mark.django_db


@pytest.fixture
def physics(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    ann = UserFactory(username="ann", email="ann@example.com", first_name="Ann", last_name="Smith")
    return EmailListFactory(
        name="Physics",
        regex="physics",
        users=[ann],
        addresses="desk@example.org",
        posting_policy=EmailList.Policy.MODERATED,
    )


def test_test_an_address_shows_the_list_and_its_members(admin_client, physics):
    url = reverse("admin:mailgate_test_address")
    page = admin_client.get(url, {"address": LIST}).content.decode()
    assert "Matches list:" in page and "Physics" in page
    assert "ann@example.com (Ann Smith)" in page and "desk@example.org" in page
    assert "2 members would receive it" in page
    missing = admin_client.get(url, {"address": "nobody@lists.example.org"}).content.decode()
    assert "No list matches nobody@lists.example.org" in missing
    assert url in admin_client.get(reverse("admin:mailgate_emaillist_changelist")).content.decode()


def test_test_an_address_is_staff_only(client, physics):
    url = reverse("admin:mailgate_test_address")
    response = client.get(url, {"address": LIST})
    assert response.status_code == 302 and "login" in response["Location"]
    client.force_login(UserFactory(username="clerk", is_staff=True))  # staff, but no permission on lists
    assert client.get(url, {"address": LIST}).status_code == 403


def test_moderation_queue_approve_and_reject(admin_client, physics):
    first = gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com").inbound_id
    second = gate.run(mail_fixture("alternative.eml"), LIST, "ann@example.com").inbound_id
    queue = reverse("admin:mailgate_heldmessage_changelist")
    page = admin_client.get(queue).content.decode()
    assert "Lab on Thursday" in page and "Reading list" in page
    admin_client.post(queue, {"action": "approve", "_selected_action": [first]})
    admin_client.post(queue, {"action": "reject", "_selected_action": [second]})
    statuses = dict(InboundMessage.objects.values_list("pk", "status"))
    assert statuses == {first: "forwarded", second: "rejected"}
    assert sorted(TextOfEmail.objects.values_list("to_address", flat=True)) == [
        "ann@example.com",
        "ann@example.com",
        "desk@example.org",
    ]  # two copies of the approved one, one notice for the rejected one
    assert "Lab on Thursday" not in admin_client.get(queue).content.decode()


def test_raw_download_and_unmatched_bounces_are_visible(admin_client):
    result = gate.run(mail_fixture("dsn_rfc3464_hard.eml"), "office@example.org", "")
    response = admin_client.get(reverse("admin:mailgate_inboundmessage_raw", args=[result.inbound_id]))
    assert response["Content-Type"] == "application/octet-stream"
    assert response.content == mail_fixture("dsn_rfc3464_hard.eml")
    page = admin_client.get(reverse("admin:mailgate_bounce_changelist"), {"matched": "no"}).content.decode()
    assert "bob@example.net" in page
    assert Bounce.objects.get().email is None
    detail = admin_client.get(reverse("admin:mailgate_inboundmessage_change", args=[result.inbound_id]))
    assert detail.status_code == 200 and b"bob@example.net" in detail.content


def test_process_again(admin_client, physics, monkeypatch):
    monkeypatch.setattr(gate.routing, "route", lambda recipient: 1 / 0)
    inbound_id = gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com").inbound_id
    monkeypatch.undo()
    admin_client.post(
        reverse("admin:mailgate_inboundmessage_changelist"),
        {"action": "process_again", "_selected_action": [inbound_id]},
    )
    assert InboundMessage.objects.get(pk=inbound_id).status == "held"


def test_list_pages_render(admin_client, physics):
    assert admin_client.get(reverse("admin:mailgate_emaillist_add")).status_code == 200
    assert admin_client.get(reverse("admin:mailgate_emaillist_change", args=[physics.pk])).status_code == 200
    for name in ("inboundmessage", "heldmessage", "bounce", "sendernotice", "gateheartbeat"):
        assert admin_client.get(reverse(f"admin:mailgate_{name}_changelist")).status_code == 200


def test_invalid_list_is_refused_with_the_field_named(admin_client):
    response = admin_client.post(
        reverse("admin:mailgate_emaillist_add"),
        {
            "name": "Broken",
            "seq": 1,
            "regex": "(oops",
            "posting_policy": "anyone",
            "active": "on",
            "rewrite_from": "on",
            "created_at_0": "2026-11-21",
            "created_at_1": "10:00:00",
        },
    )
    assert response.status_code == 200
    assert "Not a valid regular expression" in response.content.decode()
    assert not EmailList.objects.exists()


# --- Mailboxes ---


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def test_account_secret_is_never_shown_and_kept_when_left_empty(admin_client):
    from .factories import MailAccountFactory

    account = MailAccountFactory(secret="hunter2-secret")
    url = reverse("admin:mailgate_mailaccount_change", args=[account.pk])
    page = admin_client.get(url).content.decode()
    assert "hunter2-secret" not in page and 'name="secret"' in page
    form = {
        "profile": account.profile_id, "address": account.address, "login": "new-login", "secret": "",
        "options": "{}", "enabled": "on",
        "folders-TOTAL_FORMS": "0", "folders-INITIAL_FORMS": "0", "folders-MIN_NUM_FORMS": "0",
        "folders-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert (account.login, account.secret) == ("new-login", "hunter2-secret")


def test_adding_an_account_discovers_folders(admin_client, dovecot, imap_user, media):
    from mailgate.models import MailAccount

    from .factories import MailServerProfileFactory
    from .mailboxes import plain

    login, password = imap_user
    dovecot.append(login, "Support", plain())
    profile = MailServerProfileFactory(imap_host=dovecot.host, imap_port=dovecot.port)
    form = {
        "profile": profile.pk, "address": "support@example.org", "login": login, "secret": password,
        "options": "{}", "enabled": "on",
        "folders-TOTAL_FORMS": "0", "folders-INITIAL_FORMS": "0", "folders-MIN_NUM_FORMS": "0",
        "folders-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    response = admin_client.post(reverse("admin:mailgate_mailaccount_add"), form, follow=True)
    assert "2 folder(s) found" in response.content.decode()
    account = MailAccount.objects.get(address="support@example.org")
    assert sorted(account.folders.values_list("name", "enabled")) == [("INBOX", False), ("Support", False)]

    dovecot.append(login, "Sales", plain())
    changelist = reverse("admin:mailgate_mailaccount_changelist")
    action = {"action": "discover_folders", "_selected_action": [account.pk]}
    response = admin_client.post(changelist, action, follow=True)
    assert "1 new folder(s) Sales" in response.content.decode()


@pytest.mark.parametrize(
    "regex, full, warning",
    [
        (".*", False, "matches every local part"),
        ("physics", False, ""),
        (r".*@.*", True, "matches addresses in any domain"),
        (r"physics@.*", True, "matches addresses in any domain"),
        (r"physics@lists\.example\.org", True, ""),
    ],
)
def test_saving_a_list_warns_when_its_pattern_catches_too_much(admin_client, regex, full, warning):
    data = {"name": "L", "seq": 100, "regex": regex, "posting_policy": "anyone", "rewrite_from": "on"}
    data.update({"created_at_0": "2026-01-05", "created_at_1": "10:00:00"})
    if full:
        data["match_full_address"] = "on"
    response = admin_client.post(reverse("admin:mailgate_emaillist_add"), data, follow=True)
    assert response.status_code == 200 and EmailList.objects.filter(regex=regex).exists()
    shown = [str(m) for m in response.context["messages"]]
    assert any(warning in m for m in shown) if warning else not any("matches" in m for m in shown)


def test_the_moderation_queue_says_why_a_members_post_was_held(admin_client, physics, stub_dns):
    physics.posting_policy = EmailList.Policy.MEMBERS
    physics.save()
    held = gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com").inbound_id  # unsigned: not proven
    page = admin_client.get(reverse("admin:mailgate_heldmessage_changelist")).content.decode()
    assert "the sender&#x27;s address is not proven" in page and "ann@example.com would be a member" in page
    admin_client.post(
        reverse("admin:mailgate_heldmessage_changelist"), {"action": "approve", "_selected_action": [held]}
    )
    assert InboundMessage.objects.get(pk=held).status == "forwarded"
    assert sorted(TextOfEmail.objects.values_list("to_address", flat=True)) == ["ann@example.com", "desk@example.org"]
