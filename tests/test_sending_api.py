"""The sending API's requests (dbmail.intake.api.views.RequestViewSet): create, read progress and outcomes, cancel.

Against the real PostgreSQL, with DRF's APIClient and real tokens; the
emails are made by the real expansion (dbmail.intake.expand).
"""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from dbmail import states
from dbmail.intake import expand
from dbmail.models import MessageRequest, SenderAccount, TextOfEmail

from .factories import GroupFactory, SenderAccountFactory, TextOfEmailFactory, UserFactory
from .sendingapi import client_for, composer

pytestmark = pytest.mark.django_db
E, R = states.EmailStatus, states.RequestStatus


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def office():
    return SenderAccountFactory(address="office@example.org", display_name="The Office")


@pytest.fixture
def ann():
    return composer("ann")


@pytest.fixture
def api(ann):
    return client_for(ann)


def rows_request(**extra):
    return {
        "sender": "office@example.org",
        "subject": "Hello {{ first_name }}",
        "text_body": "Dear {{ name }}, your code is {{ code }}.",
        "rows": [
            {"email": "cy@example.net", "first_name": "Cy", "name": "Cy Young", "code": 11},
            "Dee Dee <dee@example.net>",
        ],
        **extra,
    }


def test_anonymous_and_users_without_the_panels_permission_are_refused(office, settings):
    MessageRequest.objects.create(sender=office, subject="s", text_body="t", recipient_set="staff")
    assert APIClient().get("/api/v1/requests/").status_code == 401
    assert APIClient().post("/api/v1/send/", {}, format="json").status_code == 401
    plain = client_for(UserFactory(username="plain"))
    for method, path in [
        ("get", "/api/v1/requests/"),
        ("post", "/api/v1/requests/"),
        ("get", f"/api/v1/requests/{MessageRequest.objects.get().pk}/"),
        ("post", "/api/v1/send/"),
        ("get", "/api/v1/send/"),
    ]:
        assert getattr(plain, method)(path, {}, format="json").status_code == 403, path
    # Staff may, by DBMAIL_PANEL_ALL_STAFF (the panel's rule); without it only the permission counts.
    staff = client_for(UserFactory(username="boss", is_staff=True))
    assert staff.get("/api/v1/requests/").status_code == 200
    settings.DBMAIL_PANEL_ALL_STAFF = False
    assert staff.get("/api/v1/requests/").status_code == 403
    assert client_for(composer("holder")).get("/api/v1/requests/").status_code == 200


def test_a_request_to_a_group_is_queued_and_expanded(api, ann, office):
    teachers = GroupFactory(name="Teachers")
    UserFactory(username="tim", first_name="Tim", groups=[teachers])
    UserFactory(username="tess", first_name="Tess", groups=[teachers])
    UserFactory(username="sam")

    response = api.post(
        "/api/v1/requests/",
        {
            "sender": office.pk,
            "subject": "Hello {{ first_name }}",
            "text_body": "Meeting at {{ room }}.",
            "recipient_set": "groups",
            "recipient_params": {"groups": ["Teachers"]},
            "context": {"room": "B12"},
        },
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["sender"], body["creator"]) == (R.QUEUED, "office@example.org", "ann")
    assert body["progress"]["total"] == 0 and body["left_out"] == []
    assert expand.expand_due().emails == 2
    emails = {e.to_address: e for e in TextOfEmail.objects.all()}
    assert emails["tim@example.org"].subject == "Hello Tim" and "B12" in emails["tess@example.org"].text
    detail = api.get(f"/api/v1/requests/{body['id']}/").json()
    assert detail["status"] == R.EXPANDED
    assert detail["progress"]["counts"][E.QUEUED] == 2 and detail["progress"]["waiting"] == 2
    assert detail["progress"]["finished"] is False


def test_rows_with_variables_and_bad_rows_reported_or_left_out(api, office):
    bad = rows_request(
        rows=[*rows_request()["rows"], "not an address", {"name": "no address"}, {"email": "x@y.z", "bad key": 1}]
    )

    refused = api.post("/api/v1/requests/", bad, format="json")
    assert refused.status_code == 400
    lines = refused.json()["rows"]
    assert lines[0].startswith("3 bad row(s)")
    assert lines[1].startswith("row 3: invalid address") and lines[2] == "row 4: no email address"
    assert lines[3].startswith("row 5: 'bad key' cannot be a template variable")
    assert MessageRequest.objects.count() == 0

    made = api.post("/api/v1/requests/", {**bad, "skip_bad_rows": True}, format="json")
    assert made.status_code == 201, made.json()
    assert len(made.json()["left_out"]) == 3
    assert made.json()["recipient_params"]["rows"] == 2  # the rows themselves are not echoed
    expand.expand_due()
    cy = TextOfEmail.objects.get(to_address="cy@example.net")
    assert (cy.subject, cy.to_name) == ("Hello Cy", "Cy Young") and "your code is 11." in cy.text
    assert TextOfEmail.objects.get(to_address="dee@example.net").to_name == "Dee Dee"


def test_a_csv_file_as_the_comm_panel_takes_it(api, office):
    form = {k: v for k, v in rows_request().items() if k != "rows"}
    data = b"email,first_name,code\ncy@example.net,Cy,11\nnot an address,X,1\ndee@example.net,Dee,12\n"

    refused = api.post("/api/v1/requests/", {**form, "csv": SimpleUploadedFile("list.csv", data)}, format="multipart")
    assert refused.status_code == 400
    assert refused.json()["csv"][1].startswith("line 3: invalid address")
    made = api.post(
        "/api/v1/requests/",
        {**form, "csv": SimpleUploadedFile("list.csv", data), "skip_bad_rows": "true"},
        format="multipart",
    )
    assert made.status_code == 201, made.json()
    assert made.json()["left_out"][0].startswith("line 3") and made.json()["recipient_params"]["rows"] == 2
    expand.expand_due()
    assert "your code is 12." in TextOfEmail.objects.get(to_address="dee@example.net").text
    no_email = api.post(
        "/api/v1/requests/", {**form, "csv": SimpleUploadedFile("x.csv", b"name\nAnn\n")}, format="multipart"
    )
    assert no_email.status_code == 400 and "email" in no_email.json()["csv"][0]
    both = api.post(
        "/api/v1/requests/",
        {**form, "rows": "cy@example.net", "csv": SimpleUploadedFile("list.csv", data)},
        format="multipart",
    )
    assert both.status_code == 400 and "recipient_set" in both.json()


def test_template_errors_are_400_with_the_line(api, office):
    response = api.post(
        "/api/v1/requests/",
        rows_request(text_body="Line one\n{% if x %}never closed", html_body="<p>{{ a|nosuchfilter }}</p>"),
        format="json",
    )
    assert response.status_code == 400
    errors = response.json()
    assert "line 2" in errors["text_body"][0] and "Template error" in errors["html_body"][0]


def test_sender_by_id_or_address_and_only_usable_ones(api, office):
    assert api.post("/api/v1/requests/", rows_request(sender=office.pk), format="json").status_code == 201
    assert api.post("/api/v1/requests/", rows_request(sender="OFFICE@example.org"), format="json").status_code == 201
    off = SenderAccountFactory(address="old@example.org", active=False)
    mirror = SenderAccount.objects.create(address="ann.box@example.org", mailbox=True)
    for sender in (off.pk, "old@example.org", mirror.pk, "ann.box@example.org", "stranger@example.org", 10**30, True):
        response = api.post("/api/v1/requests/", rows_request(sender=sender), format="json")
        assert response.status_code == 400 and "sender" in response.json(), sender
    assert MessageRequest.objects.count() == 2


def test_a_draft_waits_until_scheduled(api, office):
    draft = api.post("/api/v1/requests/", rows_request(draft=True), format="json").json()
    assert draft["status"] == R.DRAFT
    assert expand.expand_due().requests == 0

    later = timezone.now() + timedelta(hours=2)
    scheduled = api.post(f"/api/v1/requests/{draft['id']}/schedule/", {"send_at": later.isoformat()}, format="json")
    assert scheduled.status_code == 200 and scheduled.json()["status"] == R.QUEUED
    assert MessageRequest.objects.get().send_at == later
    assert expand.expand_due().requests == 0  # not before send_at
    again = api.post(f"/api/v1/requests/{draft['id']}/schedule/", {}, format="json")
    assert again.status_code == 409


def test_scheduling_checks_the_draft_again(api, office):
    draft = api.post("/api/v1/requests/", rows_request(draft=True), format="json").json()
    SenderAccount.objects.filter(pk=office.pk).update(active=False)
    response = api.post(f"/api/v1/requests/{draft['id']}/schedule/", {}, format="json")
    assert response.status_code == 400 and "sender" in response.json()
    assert MessageRequest.objects.get().status == R.DRAFT


def test_send_at_in_the_future_is_kept_and_the_past_refused(api, office):
    soon = timezone.now() + timedelta(days=1)
    made = api.post("/api/v1/requests/", rows_request(send_at=soon.isoformat()), format="json")
    assert made.status_code == 201 and MessageRequest.objects.get().send_at == soon
    past = api.post("/api/v1/requests/", rows_request(send_at="2020-01-01T00:00:00Z"), format="json")
    assert past.status_code == 400 and "send_at" in past.json()


def test_attachments_as_files_or_base64_within_the_limit(api, office, settings):
    settings.DBMAIL_MAX_ATTACHMENT_BYTES = 1000
    form = {k: v for k, v in rows_request().items() if k != "rows"}
    form["rows"] = '[{"email": "cy@example.net"}]'  # JSON text in a multipart form
    form["files"] = [
        SimpleUploadedFile("a.pdf", b"%PDF" + b"x" * 400, "application/pdf"),
        SimpleUploadedFile("b.txt", b"hi"),
    ]
    made = api.post("/api/v1/requests/", form, format="multipart")
    assert made.status_code == 201, made.json()
    assert [(a["filename"], a["size"]) for a in made.json()["attachments"]] == [("a.pdf", 404), ("b.txt", 2)]
    request = MessageRequest.objects.get()
    assert request.attachments.first().file.read() == b"%PDF" + b"x" * 400

    encoded = {"filename": "c.bin", "content_type": "application/octet-stream", "content": "AAEC/w=="}
    made = api.post("/api/v1/requests/", rows_request(attachments=[encoded]), format="json")
    assert made.status_code == 201 and made.json()["attachments"][0]["size"] == 4

    form["files"] = [SimpleUploadedFile("big.bin", b"x" * 1001)]
    too_big = api.post("/api/v1/requests/", form, format="multipart")
    assert too_big.status_code == 400 and "DBMAIL_MAX_ATTACHMENT_BYTES" in too_big.json()["files"][0]
    assert MessageRequest.objects.count() == 2


def test_a_user_reads_only_their_own_requests_staff_read_all(api, ann, office):
    bob = composer("bob")
    bobs = client_for(bob)
    mine = api.post("/api/v1/requests/", rows_request(), format="json").json()["id"]
    theirs = bobs.post("/api/v1/requests/", rows_request(draft=True), format="json").json()["id"]

    assert [r["id"] for r in api.get("/api/v1/requests/").json()["results"]] == [mine]
    for path in ("", "emails/"):
        assert api.get(f"/api/v1/requests/{theirs}/{path}").status_code == 404
        assert bobs.get(f"/api/v1/requests/{mine}/{path}").status_code == 404
        assert api.get(f"/api/v1/requests/{mine}/{path}").status_code == 200
    for path in ("cancel/", "schedule/"):
        assert api.post(f"/api/v1/requests/{theirs}/{path}", {}, format="json").status_code == 404
    assert MessageRequest.objects.get(pk=theirs).status == R.DRAFT
    staff = client_for(composer("root", staff=True))
    assert {r["id"] for r in staff.get("/api/v1/requests/").json()["results"]} == {mine, theirs}


def test_emails_paginated_and_filtered_by_status(api, ann, office):
    mail = MessageRequest.objects.create(sender=office, subject="s", text_body="t", recipient_set="staff", creator=ann)
    for n, status in enumerate([E.SENT, E.SENT, E.BOUNCED, E.DROPPED, E.QUEUED]):
        TextOfEmailFactory(request=mail, account=office, to_address=f"r{n}@example.net", status=status)

    page = api.get(f"/api/v1/requests/{mail.pk}/emails/", {"page_size": 2}).json()
    assert page["count"] == 5 and len(page["results"]) == 2 and page["next"]
    assert page["results"][0]["to_address"] == "r0@example.net"
    sent = api.get(f"/api/v1/requests/{mail.pk}/emails/", {"status": E.SENT}).json()
    assert [e["to_address"] for e in sent["results"]] == ["r0@example.net", "r1@example.net"]
    failed = api.get(f"/api/v1/requests/{mail.pk}/emails/", {"status": f"{E.BOUNCED},{E.DROPPED}"}).json()
    assert failed["count"] == 2
    assert api.get(f"/api/v1/requests/{mail.pk}/emails/", {"status": "lost"}).status_code == 400


def test_progress_counts_and_rates(api, ann, office):
    mail = MessageRequest.objects.create(
        sender=office, subject="s", text_body="t", recipient_set="staff", creator=ann, status=R.EXPANDED
    )
    statuses = [E.DELIVERED] * 5 + [E.BOUNCED, E.COMPLAINED, E.SENT, E.DROPPED, E.DEFERRED]
    for n, status in enumerate(statuses):
        TextOfEmailFactory(request=mail, account=office, to_address=f"r{n}@example.net", status=status)
    mail.purged_counts = {E.DELIVERED: 10}
    mail.save()

    progress = api.get(f"/api/v1/requests/{mail.pk}/").json()["progress"]
    assert progress["total"] == 20 and progress["done"] == 19 and progress["waiting"] == 1
    assert progress["counts"][E.DELIVERED] == 15 and progress["counts"][E.CANCELLED] == 0
    # 18 accepted by the MTA (15 delivered, 1 bounced, 1 complained, 1 sent), 1 dropped, 1 deferred.
    assert progress["rates"] == {
        "accepted": 0.9,
        E.DELIVERED: round(15 / 18, 4),
        E.BOUNCED: round(1 / 18, 4),
        E.COMPLAINED: round(1 / 18, 4),
        E.DROPPED: 0.05,
    }
    assert progress["finished"] is False
    listed = api.get("/api/v1/requests/").json()["results"][0]["progress"]
    assert listed == progress  # the list's grouped counts agree with the detail's


def test_cancel_stops_the_unsent_emails(api, ann, office):
    mail = MessageRequest.objects.create(
        sender=office, subject="s", text_body="t", recipient_set="staff", creator=ann, status=R.EXPANDED
    )
    for n, status in enumerate([E.QUEUED, E.DEFERRED, E.SENT]):
        TextOfEmailFactory(request=mail, account=office, to_address=f"r{n}@example.net", status=status)

    response = api.post(f"/api/v1/requests/{mail.pk}/cancel/")
    assert response.status_code == 200
    assert response.json() == {"id": mail.pk, "status": R.CANCELLED, "cancelled_emails": 2}
    assert sorted(mail.emails.values_list("status", flat=True)) == sorted([E.CANCELLED, E.CANCELLED, E.SENT])
    again = api.post(f"/api/v1/requests/{mail.pk}/cancel/").json()
    assert again["cancelled_emails"] == 0
    progress = api.get(f"/api/v1/requests/{mail.pk}/").json()["progress"]
    assert progress["finished"] is True


def test_unusable_set_parameters_are_400_not_a_later_failure(api, office):
    for name, params in [("groups", {"groups": 5}), ("nosuchset", {}), ("addresses", {"rows": ["a@b.c"]})]:
        response = api.post(
            "/api/v1/requests/",
            {"sender": office.pk, "subject": "s", "text_body": "t", "recipient_set": name, "recipient_params": params},
            format="json",
        )
        assert response.status_code == 400, (name, response.json())
    assert MessageRequest.objects.count() == 0


def test_an_api_draft_opens_in_the_comm_panel_with_its_rows(api, ann, office):
    draft = api.post("/api/v1/requests/", rows_request(draft=True), format="json").json()
    ann.is_staff = True
    ann.save()
    panel = Client()
    panel.force_login(ann)
    page = panel.get(f"/commpanel/requests/{draft['id']}/edit/").content.decode()
    assert "rows sent through the API (2 rows; columns email, first_name, name, code)" in page
    assert "2 rows from the API" in panel.get(f"/commpanel/requests/{draft['id']}/").content.decode()


def test_the_schema_has_the_sending_api(api):
    paths = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()["paths"]
    for path in (
        "/api/v1/requests/", "/api/v1/requests/{id}/", "/api/v1/requests/{id}/emails/",
        "/api/v1/requests/{id}/cancel/", "/api/v1/requests/{id}/schedule/", "/api/v1/send/", "/api/v1/send/{id}/",
    ):  # fmt: skip
        assert path in paths, path
    send = paths["/api/v1/send/"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in send["parameters"]}
    assert {"200", "201", "422"} <= set(send["responses"])


def test_the_permission_alone_is_enough_without_staff(office):
    user = UserFactory(username="helper")
    client = client_for(user)
    assert client.get("/api/v1/requests/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="add_messagerequest"))
    assert client.get("/api/v1/requests/").status_code == 200


def test_a_failed_request_shows_why_and_can_be_retried(api, ann, office):
    from dbmail.models import AuditEvent

    made = api.post("/api/v1/requests/", rows_request(), format="json").json()
    assert api.post(f"/api/v1/requests/{made['id']}/retry/").status_code == 409  # it has not failed
    MessageRequest.objects.filter(pk=made["id"]).update(
        status=R.FAILED, failure="recipient set failed", failed_at=timezone.now()
    )
    shown = api.get(f"/api/v1/requests/{made['id']}/").json()
    assert (shown["status"], shown["failure"]) == (R.FAILED, "recipient set failed") and shown["failed_at"]
    retried = api.post(f"/api/v1/requests/{made['id']}/retry/")
    assert retried.json() == {"id": made["id"], "status": R.QUEUED}
    assert MessageRequest.objects.get().failure == ""
    retried = AuditEvent.objects.get(kind=AuditEvent.Kind.RETRY)  # one event, the API's
    assert (retried.actor, retried.action) == (ann, "retry (API)") and "from the start" in retried.detail
    assert client_for(composer("bob")).post(f"/api/v1/requests/{made['id']}/retry/").status_code == 404


def test_mail_of_an_inactive_sender_is_shown_held(api, ann, office):
    from dbmail.models import AuditEvent

    mail = MessageRequest.objects.create(sender=office, subject="s", text_body="t", recipient_set="staff", creator=ann)
    for n in range(2):
        TextOfEmailFactory(request=mail, account=office, to_address=f"r{n}@example.net", status=E.QUEUED)
    SenderAccount.objects.filter(pk=office.pk).update(active=False)

    shown = api.get(f"/api/v1/requests/{mail.pk}/").json()
    assert shown["held"] is True
    assert shown["progress"]["counts"][states.HELD] == 2 and shown["progress"]["counts"][E.QUEUED] == 0
    assert shown["progress"]["waiting"] == 2 and shown["progress"]["total"] == 2
    assert api.get("/api/v1/requests/").json()["results"][0]["progress"] == shown["progress"]
    api.post(f"/api/v1/requests/{mail.pk}/cancel/")
    cancelled = AuditEvent.objects.get(kind=AuditEvent.Kind.CANCEL)  # who cancelled, in its history, once
    assert (cancelled.actor, cancelled.action, cancelled.request) == (ann, "cancel (API)", mail)


def test_every_action_through_the_api_is_in_the_audit_trail(api, ann, office):
    from dbmail.models import AuditEvent

    made = api.post("/api/v1/requests/", rows_request(draft=True), format="json").json()
    api.post(f"/api/v1/requests/{made['id']}/schedule/", {}, format="json")
    api.post(f"/api/v1/requests/{made['id']}/cancel/")
    events = AuditEvent.objects.filter(request_id=made["id"]).order_by("id")
    assert [(e.action, e.actor_name) for e in events] == [
        ("create draft (API)", "ann"),
        ("schedule (API)", "ann"),
        ("cancel (API)", "ann"),
    ]
    assert events[2].detail == "0 email(s) stopped before sending"
