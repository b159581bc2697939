"""Seed 002's paths (mailgate.mailboxes.api.seed_urls): /rest/v1/model/email/... as aliases of /api/v1/.

Every alias path, with and without the trailing slash the seed leaves out;
the same token, the same 404 for another user's things; the seed's status
words and field names (deleteOnServer, html, rawMessage).
"""

import pytest
from rest_framework.test import APIClient

from mailgate.mailboxes import store as mailbox
from mailgate.models import Message

from .factories import MailAccountFactory, MailFolderFactory, MailServerProfileFactory, UserFactory
from .mailboxes import PDF, PNG, plain, rich
from .sendingapi import client_for
from .smtpserver import SMTPServer

pytestmark = pytest.mark.django_db
BASE = "/rest/v1/model/email"
S = Message.Status


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def ann():
    return UserFactory(username="ann")


@pytest.fixture
def api(ann):
    return client_for(ann)


@pytest.fixture
def mine(ann):
    """Ann's account, a folder, and a received message with HTML, an inline image and attachments."""
    account = MailAccountFactory(owner=ann)
    folder = MailFolderFactory(account=account, name="INBOX", delete_on_server=True)
    message = mailbox.store_incoming(folder, 1, 1, rich())[0]
    return account, folder, message


@pytest.fixture
def theirs():
    account = MailAccountFactory(owner=UserFactory(username="bob"))
    folder = MailFolderFactory(account=account, name="INBOX")
    return account, folder, mailbox.store_incoming(folder, 1, 1, rich())[0]


def message_paths(pk):
    return [
        f"{BASE}/Messages/{pk}", f"{BASE}/Messages/{pk}/attachments", f"{BASE}/Messages/{pk}/attachments/0",
        f"{BASE}/Messages/{pk}/html", f"{BASE}/Messages/{pk}/inlines", f"{BASE}/Messages/{pk}/inlines/0",
        f"{BASE}/Messages/{pk}/rawMessage",
    ]  # fmt: skip


def test_every_alias_answers_with_and_without_the_trailing_slash(api, mine):
    account, folder, message = mine
    paths = [
        f"{BASE}/Profiles", f"{BASE}/Profiles/{account.profile_id}", f"{BASE}/Accounts", f"{BASE}/Accounts/{account.pk}",
        f"{BASE}/Folders", f"{BASE}/Folders/{folder.pk}", f"{BASE}/Messages", *message_paths(message.pk),
    ]  # fmt: skip
    for path in paths:
        for spelled in (path, path + "/"):
            assert api.get(spelled).status_code == 200, spelled


def test_the_aliases_serve_the_same_bytes_as_api_v1(api, mine):
    _, _, message = mine
    pk = message.pk
    assert api.get(f"{BASE}/Messages/{pk}/rawMessage").content == message.raw
    assert api.get(f"{BASE}/Messages/{pk}/rawMessage")["Content-Type"] == "message/rfc822"
    assert api.get(f"{BASE}/Messages/{pk}/html").content == api.get(f"/api/v1/messages/{pk}/html/").content
    assert api.get(f"{BASE}/Messages/{pk}/attachments/0").content == PDF
    assert api.get(f"{BASE}/Messages/{pk}/inlines/0").content == PNG
    listed = api.get(f"{BASE}/Messages/{pk}/attachments").json()
    assert listed[0]["filename"] == "report.pdf"
    assert listed[0]["url"].endswith(f"{BASE}/Messages/{pk}/attachments/0")  # links stay on the seed's paths
    assert api.get(listed[0]["url"]).content == PDF


def test_the_seeds_field_names(api, mine):
    account, folder, message = mine
    detail = api.get(f"{BASE}/Messages/{message.pk}").json()
    assert detail["status"] == "received"
    assert (
        detail["rawMessage"] == f"http://testserver{BASE}/Messages/{message.pk}/rawMessage"
    )  # spelled as the seed does
    assert detail["html"] == f"http://testserver{BASE}/Messages/{message.pk}/html"
    assert api.get(detail["html"]).content.startswith(b"<p>The <b>HTML</b> part")
    assert api.get(detail["inlines"][0]["url"]).content == PNG
    plain_message = mailbox.store_incoming(folder, 1, 2, plain())[0]
    assert api.get(f"{BASE}/Messages/{plain_message.pk}").json()["html"] is None

    shown = api.get(f"{BASE}/Folders/{folder.pk}").json()
    assert shown["deleteOnServer"] is True and "delete_on_server" not in shown
    changed = api.patch(f"{BASE}/Folders/{folder.pk}", {"deleteOnServer": False, "enabled": True}, format="json")
    assert changed.status_code == 200 and changed.json()["deleteOnServer"] is False
    folder.refresh_from_db()
    assert (folder.delete_on_server, folder.enabled) == (False, True)
    assert api.get(f"/api/v1/folders/{folder.pk}/").json()["delete_on_server"] is False  # the same folder


def test_the_seeds_status_words(api, ann, mine):
    account, folder, received = mine
    raw = mailbox.store_incoming(folder, 1, 3, b"no header here\r\n\r\nx")[0]
    made = {
        status: Message.objects.create(
            direction=Message.Direction.OUTGOING, status=status, account=account, to=["x@y.org"]
        )
        for status in (S.SENDING, S.SENT, S.ERROR)
    }
    for word, expected in [("received", received), ("raw", raw), *((s.value, m) for s, m in made.items())]:
        listed = api.get(f"{BASE}/Messages", {"status": word}).json()["results"]
        assert [(m["id"], m["status"]) for m in listed] == [(expected.pk, word)], word
    assert {S.SENDING, S.SENT, S.ERROR, S.RECEIVED, S.RAW} == set(S.values)


def test_a_message_created_on_the_seeds_path_is_sent(api, ann, smtp_server, django_capture_on_commit_callbacks):
    own = SMTPServer(logins={"ann": "not-the-password"}).start()
    try:
        profile = MailServerProfileFactory(smtp_host=own.host, smtp_port=own.port, smtp_auth=True)
        account = MailAccountFactory(owner=ann, profile=profile, address="office@example.org", login="ann")
        with django_capture_on_commit_callbacks(execute=True):
            created = api.post(
                f"{BASE}/Messages",  # no trailing slash, as the seed writes it: no redirect, no lost body
                {"account": account.pk, "to": ["bob@example.net"], "subject": "Hi", "status": "sending",
                 "text": "Plain.", "html": "<p>Rich.</p>"},
                format="json",
            )  # fmt: skip
        assert created.status_code == 201, created.json()
        body = created.json()
        assert body["status"] == "sending" and body["html"].endswith(f"/Messages/{body['id']}/html")
        assert api.get(f"{BASE}/Messages/{body['id']}").json()["status"] == "sent"
        assert [m.rcpt_tos for m in own.received] == [["bob@example.net"]]
        assert api.get(f"{BASE}/Messages/{body['id']}/rawMessage").content == bytes(
            Message.objects.get().outbox.get().raw_message
        )
        assert api.get(f"{BASE}/Messages/{body['id']}/html").content == b"<p>Rich.</p>"
    finally:
        own.stop()


def test_another_users_things_are_404_and_strangers_401(api, mine, theirs):
    account, folder, message = theirs
    for path in [f"{BASE}/Accounts/{account.pk}", f"{BASE}/Folders/{folder.pk}", *message_paths(message.pk)]:
        assert api.get(path).status_code == 404, path
        assert APIClient().get(path).status_code == 401, path
    assert api.patch(f"{BASE}/Folders/{folder.pk}", {"deleteOnServer": True}, format="json").status_code == 404
    folder.refresh_from_db()
    assert folder.delete_on_server is False
    assert [m["id"] for m in api.get(f"{BASE}/Messages").json()["results"]] == [mine[2].pk]
    refused = api.post(f"{BASE}/Messages", {"account": account.pk, "to": ["x@example.org"]}, format="json")
    assert refused.status_code == 400 and "account" in refused.json()
    # Profiles: read by everyone signed in, written by holders of the permission, as under /api/v1/.
    assert (
        api.post(f"{BASE}/Profiles", {"name": "P", "imap_host": "imap.example.org"}, format="json").status_code == 403
    )
    staff = client_for(UserFactory(username="root", is_staff=True, is_superuser=True))
    assert staff.get(f"{BASE}/Messages/{message.pk}/rawMessage").status_code == 200
