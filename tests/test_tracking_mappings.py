"""MTA callbacks in their own shapes (dbmail.track.mappings): TRACKING_WEBHOOK_MAPPINGS turns them into our events.

Three shapes, each through POST /tracking/events/NAME/ and the real tracking
queue to the email: a Postal-like nested one ({"event": "MessageSent",
"payload": {"message": {...}}}) signed with our HMAC headers; the EFS
notifier's `delivery-status` + `status` with a Bearer token, no event id and
no time stamp, naming the email by the MTA's queue id (from a real SMTP
server's "250 ... queued as" reply); and a flat one with Basic auth naming it
by our tracking header.
"""

import base64
import json
import time
from types import SimpleNamespace

import pytest
from django.core import checks
from django.urls import reverse

from dbmail.models import TextOfEmail, UnmatchedTrackingEvent
from dbmail.send.loop import send_due
from dbmail.track import mappings, webhooks
from dbmail.track.consume import consume
from dbmail.track.header import tracking_id

from .conftest import manage, subprocess_env
from .factories import TextOfEmailFactory

Status = TextOfEmail.Status
SECRET = "hmac-secret-0123456789abcdef"
TOKEN = "efs-bearer-token-0123456789"
BASIC = "mta:basic-password-0123456789"

SOMEONE = SimpleNamespace(message_id="<someone@example.org>", to_address="someone@example.net")
MAPPINGS = {
    "postal": {
        "event_field": "event",
        "events": {
            "MessageSent": "delivered",
            "MessageDelayed": "deferred",
            "MessageDeliveryFailed": "bounced",
            "MessageBounced": "bounced",
            "MessageLinkClicked": None,
        },
        "id_field": "payload.message.message_id",
        "timestamp_field": "timestamp",
        "event_id_field": "uuid",
        "recipient_field": "payload.message.to",
        "diagnostic_field": "payload.output",
    },
    "efs": {
        "event_field": "event",
        "status_field": "status",
        "events": {
            "delivery-status": {"sent": "delivered", "deferred": "deferred", "bounced": "bounced", "expired": "bounced"}
        },
        "id_field": "queue_id",
        "id_kind": "queue_id",
        "recipient_field": "recipient",
        "diagnostic_field": "reason",
    },
    "flat": {
        "event_field": "type",
        "events": {"delivered": "delivered", "complaint": "complained", "*": None},
        "id_field": "headers.x-mailsite-email",
        "id_kind": "tracking",
        "timestamp_field": "at",
        "source": "flat-mta",
    },
}


@pytest.fixture
def webhook(settings):
    settings.TRACKING_WEBHOOK_ENABLED = True
    settings.TRACKING_WEBHOOK_SECRETS = [SECRET]
    settings.TRACKING_WEBHOOK_BASIC_AUTH = [BASIC]
    settings.TRACKING_WEBHOOK_BEARER_TOKENS = [TOKEN]
    settings.TRACKING_WEBHOOK_MAPPINGS = json.dumps(MAPPINGS)
    settings.TRACKING_QUEUE_URL = ""


def url(name):
    return reverse("dbmail:tracking-events-mapped", args=[name])


def signed(client, name, payload, secret=SECRET, timestamp=None):
    body = json.dumps(payload).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    return client.post(
        url(name),
        body,
        content_type="application/json",
        HTTP_X_MAILSITE_TIMESTAMP=str(timestamp),
        HTTP_X_MAILSITE_SIGNATURE=webhooks.sign(secret, timestamp, body),
    )


def with_token(client, name, payload, token=TOKEN):
    return client.post(
        url(name), json.dumps(payload), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def with_basic(client, name, payload, credentials=BASIC):
    auth = "Basic " + base64.b64encode(credentials.encode()).decode()
    return client.post(url(name), json.dumps(payload), content_type="application/json", HTTP_AUTHORIZATION=auth)


def postal(email, event="MessageSent", uuid="e1f2-0001", output="250 2.0.0 OK"):
    return {
        "event": event,
        "timestamp": 1764500000.25,
        "uuid": uuid,
        "payload": {
            "status": "Sent",
            "details": "Message accepted by mx.example.net",
            "output": output,
            "message": {"id": 12345, "token": "aBc", "message_id": email.message_id, "to": email.to_address},
        },
    }


def efs(queue_id, status="sent", **more):
    return {"event": "delivery-status", "status": status, "queue_id": queue_id, "recipient": "ann@example.net", **more}


def tracking_log(email):
    return list(email.events.filter(kind="tracking").values_list("text", flat=True))


# --- the three shapes, each with its own authentication ---


@pytest.mark.django_db
def test_a_postal_like_nested_payload_signed_with_hmac(client, webhook):
    email = TextOfEmailFactory(status=Status.SENT, to_address="ann@example.net")
    response = signed(client, "postal", postal(email))
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    assert consume().totals.applied == 1
    email.refresh_from_db()
    assert email.status == Status.DELIVERED
    (line,) = tracking_log(email)
    assert line == "[e1f2-0001] delivered from postal for ann@example.net: 250 2.0.0 OK"
    assert email.events.get(kind="tracking").at.timestamp() == 1764500000.25
    # The same event again (a new signature, same uuid) is queued and applied once.
    assert signed(client, "postal", postal(email), timestamp=int(time.time()) + 1).status_code == 202
    assert consume().totals.duplicates == 1


@pytest.mark.django_db
def test_the_efs_delivery_status_shape_with_a_bearer_token_and_the_mtas_queue_id(client, webhook, smtp_server):
    first, second = TextOfEmailFactory(to_address="ann@example.net"), TextOfEmailFactory(to_address="bob@example.net")
    assert send_due().sent == 2  # the server answered "250 2.0.0 Ok: queued as Q00000001" and "...Q00000002"
    response = with_token(
        client, "efs", [efs("Q00000001", "sent"), efs("Q00000002", "expired", reason="550 5.1.1 gone")]
    )
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    assert consume().totals.applied == 2
    first.refresh_from_db(), second.refresh_from_db()
    assert (first.status, second.status) == (Status.DELIVERED, Status.BOUNCED)
    assert tracking_log(second)[0].endswith("bounced (hard) from efs for ann@example.net: 550 5.1.1 gone")


@pytest.mark.django_db
def test_without_an_event_id_or_time_a_replay_is_still_applied_once(client, webhook, smtp_server):
    email = TextOfEmailFactory()
    send_due()
    body = efs("Q00000001", "bounced", reason="550 5.1.1 no such user")
    for _ in range(3):
        assert with_token(client, "efs", body).status_code == 202
    run = consume()
    assert (run.totals.applied, run.totals.duplicates) == (1, 2)
    email.refresh_from_db()
    assert email.status == Status.BOUNCED and len(tracking_log(email)) == 1
    assert tracking_log(email)[0].startswith(f"[{mappings.content_id(body)}]")
    # Another status for the same email is another event.
    with_token(client, "efs", efs("Q00000001", "deferred", reason="451 try later"))
    assert consume().totals.applied == 1


@pytest.mark.django_db
def test_a_flat_shape_naming_our_tracking_header_with_basic_auth(client, webhook):
    email = TextOfEmailFactory(status=Status.SENT)
    payload = {
        "type": "complaint",
        "at": "2026-11-30T10:00:00Z",
        "headers": {"x-mailsite-email": tracking_id(email.pk)},
    }
    assert with_basic(client, "flat", payload).status_code == 202
    ignored = with_basic(client, "flat", {"type": "opened-in-app", "at": 1, "headers": {}})
    assert ignored.status_code == 202 and ignored.json() == {"accepted": 0, "ignored": 1}  # "*": null
    assert consume().totals.applied == 1
    email.refresh_from_db()
    assert email.status == Status.COMPLAINED
    assert "complained from flat-mta" in tracking_log(email)[0]


@pytest.mark.django_db
def test_a_queue_id_no_email_of_ours_got_is_kept_as_unmatched(client, webhook):
    assert with_token(client, "efs", efs("NOTOURS1")).status_code == 202
    assert consume().totals.unmatched == 1
    kept = UnmatchedTrackingEvent.objects.get()
    assert kept.error == "no email of ours got the MTA's queue id 'NOTOURS1'" and kept.payload["queue_id"] == "NOTOURS1"


# --- forged, refused and unknown ---


@pytest.mark.parametrize(
    "send",
    [
        lambda client, email: signed(client, "postal", postal(email), secret="wrong-secret-0123456789abc"),
        lambda client, email: signed(client, "postal", postal(email), timestamp=int(time.time()) - 3600),
        lambda client, email: with_token(client, "efs", efs("Q1"), token="wrong-token-0123456789abcd"),
        lambda client, email: with_basic(client, "flat", {"type": "delivered"}, credentials="mta:wrong"),
        lambda client, email: client.post(url("efs"), json.dumps(efs("Q1")), content_type="application/json"),
    ],
    ids=["wrong signature", "stale signature", "wrong token", "wrong password", "no credentials"],
)
@pytest.mark.django_db
def test_forged_callbacks_are_refused_and_queue_nothing(client, webhook, send):
    email = TextOfEmailFactory(status=Status.SENT)
    response = send(client, email)
    assert response.status_code == 401 and "error" in response.json()
    assert consume().batches == 0


@pytest.mark.django_db
def test_a_signed_replay_is_refused_on_a_mapped_endpoint_too(client, webhook):
    email = TextOfEmailFactory(status=Status.SENT)
    now = int(time.time())
    assert signed(client, "postal", postal(email), timestamp=now).status_code == 202
    assert signed(client, "postal", postal(email), timestamp=now).status_code == 409


@pytest.mark.parametrize(
    "name, payload, fragment",
    [
        (
            "efs",
            efs("Q1", "weird"),
            "status 'weird' of event 'delivery-status' is not in TRACKING_WEBHOOK_MAPPINGS['efs']",
        ),
        (
            "efs",
            {"event": "open", "queue_id": "Q1"},
            "event 'open' is not in TRACKING_WEBHOOK_MAPPINGS['efs']['events']",
        ),
        ("efs", {"status": "sent", "queue_id": "Q1"}, "event (the event's name) is missing"),
        ("efs", efs(""), "queue_id (the email's queue_id) is missing"),
        ("efs", efs(["Q1"]), "queue_id must be a string"),
        ("efs", [efs("Q1"), efs("Q2", "gone")], "event 1: status 'gone'"),
        ("postal", {**postal(SOMEONE), "timestamp": None}, "timestamp is missing"),
        ("postal", {**postal(SOMEONE), "timestamp": "yesterday"}, "timestamp 'yesterday' is not"),
        ("flat", {"type": "delivered", "at": 1, "headers": {"x-mailsite-email": "x" * 101}}, "tracking_id is longer"),
        ("efs", "just text", "an event must be a JSON object"),
    ],
)
@pytest.mark.django_db
def test_a_callback_that_does_not_fit_its_mapping_gets_400_naming_why_and_queues_nothing(
    client, webhook, name, payload, fragment
):
    response = with_token(client, name, payload)
    assert response.status_code == 400 and fragment in response.json()["error"], response.json()
    assert consume().batches == 0


@pytest.mark.django_db
def test_an_unknown_mapping_is_404_once_signed_in_and_401_before(client, webhook):
    assert with_token(client, "nosuch", efs("Q1")).status_code == 404
    assert client.post(url("nosuch"), "{}", content_type="application/json").status_code == 401


@pytest.mark.django_db
def test_our_own_endpoint_does_not_read_mapped_shapes(client, webhook):
    response = client.post(
        "/tracking/events/",
        json.dumps(efs("Q1")),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert response.status_code == 400 and "delivery-status" in response.json()["error"]


# --- the setting: checked at start-up and by `manage.py check`, naming it ---


def mapping(**changes):
    spec = {**MAPPINGS["efs"], **changes}
    return json.dumps({"efs": {k: v for k, v in spec.items() if v is not ...}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{nope", "not JSON"),
        ('["efs"]', "must be a JSON object of mappings by name"),
        (json.dumps({"Bad Name": MAPPINGS["efs"]}), "mapping 'Bad Name': a name is 1-40 lower-case letters"),
        (json.dumps({"efs": []}), "mapping 'efs' must be a JSON object"),
        (mapping(id_path="x"), "mapping 'efs': unknown key 'id_path'"),
        (mapping(id_field=...), "mapping 'efs': 'id_field' is required"),
        (mapping(id_kind="uuid"), "'id_kind' 'uuid' is not one of message_id, tracking, queue_id"),
        (mapping(status_field=...), "event 'delivery-status' maps statuses, so 'status_field' is required"),
        (
            mapping(events={"delivery-status": {"sent": "deliverd"}}),
            "'delivery-status/sent' -> 'deliverd' is not one of",
        ),
        (mapping(events={}), "'events' must be a non-empty object"),
        (mapping(event_field="a..b"), "'event_field' must be a dotted path"),
        (mapping(source=5), "'source' must be a string"),
    ],
)
def test_a_bad_mapping_is_named_with_the_setting(settings, raw, message):
    assert message in mappings.problem(raw)
    settings.TRACKING_WEBHOOK_MAPPINGS = raw
    found = [e.msg for e in checks.run_checks(tags=["dbmail"])]
    assert len(found) == 1 and found[0].startswith("Setting TRACKING_WEBHOOK_MAPPINGS: ") and message in found[0]


def test_every_mapping_here_is_valid_and_an_empty_setting_means_none():
    assert mappings.problem(json.dumps(MAPPINGS)) == ""
    assert mappings.parse("") == {}
    assert set(mappings.parse(json.dumps(MAPPINGS))) == {"postal", "efs", "flat"}


def test_a_bad_mapping_stops_start_up_naming_the_setting():
    done = manage("check", env=subprocess_env(TRACKING_WEBHOOK_MAPPINGS='{"efs": {"event_field": "event"}}'))
    assert done.returncode != 0
    assert "Setting TRACKING_WEBHOOK_MAPPINGS: mapping 'efs': 'events' is required." in done.stderr
    assert "Traceback" not in done.stderr


def test_lookup_follows_dotted_paths_through_objects_and_lists():
    data = {"a": {"b": [{"c": "x"}, {"c": "y"}]}, "d": 0}
    assert mappings.lookup(data, "a.b.1.c") == "y"
    assert mappings.lookup(data, "d") == 0
    assert mappings.lookup(data, "a.b.2.c") is None and mappings.lookup(data, "a.x") is None
    assert mappings.lookup(data, "d.e") is None and mappings.lookup(data, "") is None


def test_the_content_id_is_the_same_for_the_same_object_in_any_key_order():
    assert mappings.content_id({"a": 1, "b": [1, 2]}) == mappings.content_id(json.loads('{"b": [1, 2], "a": 1}'))
    assert mappings.content_id({"a": 1}) != mappings.content_id({"a": 2})
