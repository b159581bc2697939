"""The messages API under /api/v1/: token auth, ownership, filters, files byte for byte, secrets never shown."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dbmail.models import TextOfEmail
from mailgate.mailboxes import imap
from mailgate.mailboxes import store as mailbox
from mailgate.models import MailAccount, MailFolder, Message

from .factories import MailAccountFactory, MailFolderFactory, MailServerProfileFactory, UserFactory
from .mailboxes import PDF, PNG, account_on, plain, rich
from .smtpserver import SMTPServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def ann():
    return UserFactory(username="ann")


@pytest.fixture
def api(ann):
    return client_for(ann)


def incoming(account, raw=None, uid=1, folder=None):
    folder = folder or MailFolderFactory(account=account, name=f"F{uid}")
    return mailbox.store_incoming(folder, 1, uid, raw or plain())[0]


def test_token_required():
    assert APIClient().get("/api/v1/messages/").status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/api/v1/messages/").status_code == 401


def test_token_endpoint_gives_the_users_token(ann):
    ann.set_password("pw-for-ann")
    ann.save()
    response = APIClient().post("/api/v1/token/", {"username": "ann", "password": "pw-for-ann"})
    assert response.status_code == 200
    assert response.json()["token"] == Token.objects.get(user=ann).key


def test_users_see_only_their_accounts_viewers_see_all(api, ann):
    mine = incoming(MailAccountFactory(owner=ann))
    theirs = incoming(MailAccountFactory(owner=UserFactory()))

    listed = api.get("/api/v1/messages/").json()
    assert [m["id"] for m in listed["results"]] == [mine.pk]
    assert api.get(f"/api/v1/messages/{theirs.pk}/").status_code == 404
    assert api.get(f"/api/v1/messages/{theirs.pk}/raw/").status_code == 404
    assert api.get(f"/api/v1/accounts/{theirs.account_id}/").status_code == 404
    assert api.get(f"/api/v1/folders/{theirs.folder_id}/").status_code == 404
    assert api.patch(f"/api/v1/folders/{theirs.folder_id}/", {"enabled": True}).status_code == 404

    # Staff status alone shows nothing more (as in the admin); the admin's view permission shows everyone's.
    user = UserFactory(username="root", is_staff=True)
    staff = client_for(user)
    assert [m["id"] for m in staff.get("/api/v1/messages/").json()["results"]] == []
    assert staff.get(f"/api/v1/accounts/{theirs.account_id}/").status_code == 404
    assert staff.post(f"/api/v1/messages/{theirs.pk}/retry/").status_code == 404
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_message", "view_mailaccount"]))
    assert {m["id"] for m in staff.get("/api/v1/messages/").json()["results"]} == {mine.pk, theirs.pk}
    assert staff.get(f"/api/v1/accounts/{theirs.account_id}/").status_code == 200
    # Viewing is not changing: another's folder and message stay out of reach for writes.
    assert staff.patch(f"/api/v1/folders/{theirs.folder_id}/", {"enabled": True}).status_code == 404
    assert staff.post(f"/api/v1/messages/{theirs.pk}/retry/").status_code == 404


def test_cannot_use_someone_elses_account(api):
    theirs = MailAccountFactory(owner=UserFactory())
    response = api.post("/api/v1/messages/", {"account": theirs.pk, "to": ["x@example.org"]}, format="json")
    assert response.status_code == 400 and "account" in response.json()
    response = api.post("/api/v1/folders/", {"account": theirs.pk, "name": "Spam"}, format="json")
    assert response.status_code == 400
    assert Message.objects.count() == 0 and not MailFolder.objects.filter(name="Spam").exists()


def test_profiles_are_read_by_all_and_written_by_permission(api):
    profile = MailServerProfileFactory()
    assert api.get(f"/api/v1/profiles/{profile.pk}/").json()["imap_host"] == "127.0.0.1"
    data = {"name": "Provider", "imap_host": "imap.example.org"}
    assert api.post("/api/v1/profiles/", data, format="json").status_code == 403
    bare = client_for(UserFactory(username="bare", is_staff=True))
    assert bare.post("/api/v1/profiles/", data, format="json").status_code == 403
    staff = client_for(UserFactory(username="root", is_staff=True, is_superuser=True))
    created = staff.post("/api/v1/profiles/", data, format="json")
    assert created.status_code == 201 and created.json()["imap_port"] == 993
    both = staff.post("/api/v1/profiles/", {**data, "name": "Both", "imap_starttls": True}, format="json")
    assert both.status_code == 400
    MailAccountFactory(profile=profile)
    assert staff.delete(f"/api/v1/profiles/{profile.pk}/").status_code == 409
    assert staff.delete(f"/api/v1/profiles/{created.json()['id']}/").status_code == 204
    timeout = staff.patch(f"/api/v1/profiles/{profile.pk}/", {"options": {"after_read_timeout": "soon"}}, format="json")
    assert timeout.status_code == 400 and "after_read_timeout" in str(timeout.json())


def test_creating_an_account_discovers_its_folders_and_never_shows_the_secret(api, ann, dovecot, imap_user):
    login, password = imap_user
    dovecot.append(login, "INBOX", plain())
    dovecot.append(login, "Orders", plain())
    profile = MailServerProfileFactory(imap_host=dovecot.host, imap_port=dovecot.port)

    response = api.post(
        "/api/v1/accounts/",
        {"profile": profile.pk, "address": "Orders@Example.org", "login": login, "secret": password},
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert "secret" not in body and password not in response.content.decode()
    assert body["address"] == "orders@example.org" and body["owner"] == ann.pk
    folders = api.get("/api/v1/folders/", {"account": body["id"]}).json()["results"]
    assert [(f["name"], f["enabled"]) for f in folders] == [("INBOX", False), ("Orders", False)]
    assert password not in api.get(f"/api/v1/accounts/{body['id']}/").content.decode()
    assert MailAccount.objects.get().sender.address == "orders@example.org"

    dovecot.append(login, "Invoices", plain())
    again = api.post(f"/api/v1/accounts/{body['id']}/discover/")
    assert again.json() == {"added": ["Invoices"], "error": ""}

    folder = MailFolder.objects.get(name="Orders")
    enabled = api.patch(f"/api/v1/folders/{folder.pk}/", {"enabled": True, "delete_on_server": True}, format="json")
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True


def test_unreachable_server_still_creates_the_account_with_the_reason(api):
    profile = MailServerProfileFactory(imap_host="127.0.0.1", imap_port=1)
    response = api.post(
        "/api/v1/accounts/",
        {"profile": profile.pk, "address": "a@example.org", "login": "a", "secret": "s"},
        format="json",
    )
    assert response.status_code == 201
    assert "cannot log in" in response.json()["last_error"]
    assert api.post(f"/api/v1/accounts/{response.json()['id']}/discover/").status_code == 502


def test_files_byte_for_byte_after_a_real_poll(api, ann, dovecot, imap_user):
    login, _ = imap_user
    raw = rich()
    dovecot.append(login, "INBOX", raw)
    folder = MailFolderFactory(account=account_on(dovecot, imap_user, owner=ann))
    imap.poll_folders([folder])
    message = Message.objects.get(folder=folder)
    base = f"/api/v1/messages/{message.pk}"

    detail = api.get(f"{base}/").json()
    assert (detail["status"], detail["subject"], detail["has_html"]) == ("received", "Rich mail", True)
    assert detail["truncated"] is False
    assert api.get(f"{base}/raw/").content == raw
    assert api.get(f"{base}/raw/")["Content-Type"] == "message/rfc822"
    html = api.get(f"{base}/html/")
    assert html.content == b'<p>The <b>HTML</b> part <img src="cid:logo@example.org"></p>\n'
    attachments = api.get(f"{base}/attachments/").json()
    assert [(a["position"], a["filename"], a["size"]) for a in attachments][0] == (0, "report.pdf", len(PDF))
    pdf = api.get(f"{base}/attachments/0/")
    assert (pdf.content, pdf["Content-Type"]) == (PDF, "application/pdf")
    assert 'filename="report.pdf"' in pdf["Content-Disposition"]
    inlines = api.get(f"{base}/inlines/").json()
    assert [(i["content_id"], i["filename"]) for i in inlines] == [("logo@example.org", "logo.png")]
    assert api.get(inlines[0]["url"]).content == PNG
    assert api.get(f"{base}/attachments/9/").status_code == 404


def test_no_html_is_404(api, ann):
    message = incoming(MailAccountFactory(owner=ann))
    assert api.get(f"/api/v1/messages/{message.pk}/html/").status_code == 404


def test_filters_and_pagination(api, ann):
    account = MailAccountFactory(owner=ann)
    other = MailAccountFactory(owner=ann)
    folder = MailFolderFactory(account=account)
    early = mailbox.store_incoming(folder, 1, 1, plain("Early", Date="Sun, 01 Nov 2026 10:00:00 +0000"))[0]
    late = mailbox.store_incoming(folder, 1, 2, plain("Late", Date="Tue, 03 Nov 2026 10:00:00 +0000"))[0]
    raw = mailbox.store_incoming(folder, 1, 3, b"no header here\r\n\r\nx")[0]
    sending = Message.objects.create(direction="out", status="sending", account=other, to=["x@example.org"])

    def ids(**params):
        return sorted(m["id"] for m in api.get("/api/v1/messages/", params).json()["results"])

    assert ids(status="raw") == [raw.pk]
    assert ids(direction="out") == [sending.pk]
    assert ids(account=other.pk) == [sending.pk]
    assert ids(folder=folder.pk, status="received") == [early.pk, late.pk]
    assert ids(date_before="2026-11-02", folder=folder.pk) == [early.pk]
    assert ids(date_after="2026-11-02T00:00:00Z", date_before="2026-11-04", status="received") == [late.pk]
    assert api.get("/api/v1/messages/", {"date_after": "yesterday"}).status_code == 400
    page = api.get("/api/v1/messages/", {"page_size": 2}).json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]


def test_created_message_is_sent_through_the_accounts_server(api, ann, smtp_server, django_capture_on_commit_callbacks):
    own = SMTPServer(logins={"ann": "not-the-password"}).start()
    try:
        profile = MailServerProfileFactory(smtp_host=own.host, smtp_port=own.port, smtp_auth=True)
        account = MailAccountFactory(owner=ann, profile=profile, address="office@example.org", login="ann")
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(
                "/api/v1/messages/",
                {
                    "account": account.pk, "to": ["bob@example.net"], "subject": "Hi",
                    "text": "Plain.\n", "html": "<p>Rich.</p>", "status": "sent",
                },
                format="json",
            )  # fmt: skip
        assert response.status_code == 201, response.json()
        assert (response.json()["status"], response.json()["direction"]) == ("sending", "out")  # status is not ours
        assert response.json()["from_header"] == "office@example.org"
        message = Message.objects.get()
        assert message.status == "sent"
        assert [m.rcpt_tos for m in own.received] == [["bob@example.net"]] and smtp_server.received == []
        sent = api.get(f"/api/v1/messages/{message.pk}/raw/").content
        assert sent == bytes(message.outbox.get().raw_message)
        assert api.get(f"/api/v1/messages/{message.pk}/html/").content == b"<p>Rich.</p>"
    finally:
        own.stop()


def test_no_recipient_is_refused(api, ann):
    account = MailAccountFactory(owner=ann)
    response = api.post("/api/v1/messages/", {"account": account.pk, "subject": "x"}, format="json")
    assert response.status_code == 400 and Message.objects.count() == 0


def test_schema_is_for_signed_in_users_unless_published(api, settings):
    assert APIClient().get("/api/v1/schema/").status_code == 401
    settings.API_SCHEMA_PUBLIC = True
    assert APIClient().get("/api/v1/schema/").status_code == 200


def test_schema_is_served(api):
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/messages/{id}/raw/", "/api/v1/messages/{id}/attachments/{position}/", "/api/v1/accounts/",
        "/api/v1/grants/",
    ):  # fmt: skip
        assert path in paths


def test_outgoing_attachments_are_sent_and_served(api, ann, smtp_server, django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile

    own = SMTPServer(logins={"ann": "not-the-password"}).start()
    try:
        profile = MailServerProfileFactory(smtp_host=own.host, smtp_port=own.port, smtp_auth=True)
        account = MailAccountFactory(owner=ann, profile=profile, address="office@example.org", login="ann")
        files = [
            SimpleUploadedFile("report.pdf", PDF, content_type="application/pdf"),
            SimpleUploadedFile("logo.png", PNG, content_type="image/png"),
        ]
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(
                "/api/v1/messages/",
                {"account": account.pk, "to": ["bob@example.net", "cy@example.net"], "subject": "Files",
                 "text": "Two files.", "files": files},
                format="multipart",
            )  # fmt: skip
        assert response.status_code == 201, response.json()
        message = Message.objects.get()
        assert message.status == "sent" and message.to == ["bob@example.net", "cy@example.net"]
        received = own.to("cy@example.net")[0].message
        sent_files = {p.get_filename(): p.get_payload(decode=True) for p in received.iter_attachments()}
        assert sent_files == {"report.pdf": PDF, "logo.png": PNG}
        assert api.get(f"/api/v1/messages/{message.pk}/attachments/1/").content == PNG
    finally:
        own.stop()


def test_too_many_attachment_bytes_are_refused(api, ann, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.DBMAIL_MAX_ATTACHMENT_BYTES = 100
    account = MailAccountFactory(owner=ann)
    big = SimpleUploadedFile("big.bin", b"x" * 101)
    response = api.post("/api/v1/messages/", {"account": account.pk, "to": ["b@example.org"], "files": [big]})
    assert response.status_code == 400 and "at most 100" in str(response.json())
    assert Message.objects.count() == 0


def test_a_message_in_error_can_be_sent_again(api, ann, smtp_server, django_capture_on_commit_callbacks):
    own = SMTPServer(logins={"ann": "not-the-password"}).start()
    try:
        own.script("bob@example.net", "550 5.1.1 no such user", "250")
        profile = MailServerProfileFactory(smtp_host=own.host, smtp_port=own.port, smtp_auth=True)
        account = MailAccountFactory(owner=ann, profile=profile, login="ann")
        with django_capture_on_commit_callbacks(execute=True):
            created = api.post("/api/v1/messages/", {"account": account.pk, "to": ["bob@example.net"]}, format="json")
        message = Message.objects.get(pk=created.json()["id"])
        assert message.status == "error" and "5.1.1" in message.last_error

        with django_capture_on_commit_callbacks(execute=True):
            retried = api.post(f"/api/v1/messages/{message.pk}/retry/")
        assert retried.status_code == 200 and retried.json()["status"] == "sending"
        message.refresh_from_db()
        assert (message.status, message.last_error) == ("sent", "")
        assert [m.rcpt_tos for m in own.received] == [["bob@example.net"]]
        assert api.post(f"/api/v1/messages/{message.pk}/retry/").status_code == 409
    finally:
        own.stop()


def test_a_retry_sends_only_to_the_recipients_that_failed(api, ann, smtp_server, django_capture_on_commit_callbacks):
    own = SMTPServer(logins={"ann": "not-the-password"}).start()  # the account's own server, which proves it
    try:
        own.script("bob@example.net", "550 5.1.1 no such user", "250")  # refused once, then accepted
        profile = MailServerProfileFactory(smtp_host=own.host, smtp_port=own.port, smtp_auth=True)
        account = MailAccountFactory(owner=ann, profile=profile, login="ann")
        to = ["ann.other@EXAMPLE.net", "bob@example.net"]
        with django_capture_on_commit_callbacks(execute=True):
            created = api.post("/api/v1/messages/", {"account": account.pk, "to": to, "subject": "Once"}, format="json")
        message = Message.objects.get(pk=created.json()["id"])
        assert message.status == "error" and "bob@example.net: 5.1.1" in message.last_error
        assert [m.rcpt_tos for m in own.received] == [["ann.other@example.net"]]
        first_copy = message.outbox.get(to_address="ann.other@example.net")

        with django_capture_on_commit_callbacks(execute=True):
            retried = api.post(f"/api/v1/messages/{message.pk}/retry/")
        assert retried.status_code == 200
        message.refresh_from_db()
        assert (message.status, message.last_error) == ("sent", "")
        assert [m.rcpt_tos for m in own.received] == [["ann.other@example.net"], ["bob@example.net"]]
        assert own.refused == [("bob@example.net", "550 5.1.1 no such user")]
        assert sorted(message.outbox.values_list("to_address", "status")) == [
            ("ann.other@example.net", "sent"),
            ("bob@example.net", "sent"),
        ]
        assert message.outbox.get(to_address="ann.other@example.net") == first_copy  # kept, not remade
        # The failed copy stays in dbmail's log, no longer the message's.
        assert TextOfEmail.objects.filter(to_address="bob@example.net", status="dropped").count() == 1
    finally:
        own.stop()
