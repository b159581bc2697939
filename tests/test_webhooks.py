import base64
import json
import time

import pytest
from django.db import connection
from django.urls import reverse

from dbmail.models import TextOfEmail, TrackingQueueItem
from dbmail.track import webhooks
from dbmail.track.consume import consume

from .conftest import manage, subprocess_env
from .factories import TextOfEmailFactory
from .tracking_support import TCPProxy, event

OLD, NEW = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"
URL = "/tracking/events/"
Status = TextOfEmail.Status


@pytest.fixture
def webhook(settings):
    settings.TRACKING_WEBHOOK_ENABLED = True
    settings.TRACKING_WEBHOOK_SECRETS = [NEW, OLD]
    settings.TRACKING_WEBHOOK_BASIC_AUTH = ["mta:basic-password-0123456789"]
    settings.TRACKING_WEBHOOK_MAX_AGE = 300


def post(client, payload, secret=NEW, timestamp=None, body=None, headers=None):
    body = body if body is not None else json.dumps(payload).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = {}
    if secret:
        signed = {
            "HTTP_X_MAILSITE_TIMESTAMP": str(timestamp),
            "HTTP_X_MAILSITE_SIGNATURE": webhooks.sign(secret, timestamp, body),
        }
    signed.update(headers or {})
    return client.post(URL, body, content_type="application/json", **signed)


def nothing_queued():
    return consume().batches == 0


def test_the_url():
    assert reverse("dbmail:tracking-events") == URL


@pytest.mark.django_db
def test_a_signed_callback_reaches_the_email_through_the_queue(client, webhook, queue_backend):
    a, b = TextOfEmailFactory(status=Status.SENT), TextOfEmailFactory(status=Status.SENT)
    response = post(client, [event(a.message_id, "delivered"), event(b.message_id, "bounced", diagnostic="550 5.1.1")])
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    assert post(client, event(a.message_id, "complained")).status_code == 202  # a single object works too
    run = consume()
    assert run.totals.applied == 3
    a.refresh_from_db(), b.refresh_from_db()
    assert (a.status, b.status) == (Status.COMPLAINED, Status.BOUNCED)


@pytest.mark.django_db
def test_a_secret_being_rotated_out_still_works(client, webhook, queue_backend):
    email = TextOfEmailFactory(status=Status.SENT)
    assert post(client, event(email.message_id), secret=OLD).status_code == 202
    assert post(client, event(email.message_id, "opened"), secret=NEW).status_code == 202
    assert consume().totals.applied == 2


@pytest.mark.parametrize(
    "change, status",
    [
        ("wrong secret", 401),
        ("retired secret", 401),
        ("stale timestamp", 401),
        ("future timestamp", 401),
        ("tampered body", 401),
        ("no signature header", 401),
        ("no timestamp header", 401),
        ("no headers at all", 401),
        ("timestamp not a number", 400),
    ],
)
@pytest.mark.django_db
def test_forged_stale_and_incomplete_requests_are_refused_and_change_nothing(
    client, webhook, queue_backend, change, status
):
    email = TextOfEmailFactory(status=Status.SENT)
    payload = event(email.message_id)
    body = json.dumps(payload).encode()
    now = int(time.time())
    kwargs = {
        "wrong secret": dict(secret="not-the-secret-0123456789"),
        "retired secret": dict(secret="older-secret-0123456789abc"),
        "stale timestamp": dict(timestamp=now - 301),
        "future timestamp": dict(timestamp=now + 301),
        "tampered body": dict(body=body.replace(b"delivered", b"complained")),
        "no signature header": dict(secret=None, headers={"HTTP_X_MAILSITE_TIMESTAMP": str(now)}),
        "no timestamp header": dict(secret=None, headers={"HTTP_X_MAILSITE_SIGNATURE": webhooks.sign(NEW, now, body)}),
        "no headers at all": dict(secret=None),
        "timestamp not a number": dict(
            secret=None,
            headers={
                "HTTP_X_MAILSITE_TIMESTAMP": "soon",
                "HTTP_X_MAILSITE_SIGNATURE": webhooks.sign(NEW, "soon", body),
            },
        ),
    }[change]
    if change == "tampered body":
        # Signed over the original body, sent with another.
        kwargs["headers"] = {
            "HTTP_X_MAILSITE_TIMESTAMP": str(now),
            "HTTP_X_MAILSITE_SIGNATURE": webhooks.sign(NEW, now, body),
        }
        kwargs["secret"] = None
    response = post(client, payload, **kwargs)
    assert response.status_code == status, response.content
    assert "error" in response.json()
    assert nothing_queued()
    email.refresh_from_db()
    assert email.status == Status.SENT


@pytest.mark.django_db
def test_a_replayed_request_is_refused(client, webhook, queue_backend):
    email = TextOfEmailFactory(status=Status.SENT)
    body = json.dumps(event(email.message_id)).encode()
    now = int(time.time())
    assert post(client, None, body=body, timestamp=now).status_code == 202
    replay = post(client, None, body=body, timestamp=now)
    assert replay.status_code == 409 and "replay" in replay.json()["error"]
    run = consume()
    assert run.totals.applied == 1 and run.totals.duplicates == 0


@pytest.mark.django_db
def test_http_basic_is_the_simpler_alternative(client, webhook, queue_backend):
    email = TextOfEmailFactory(status=Status.SENT)

    def basic(credentials):
        return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(credentials.encode()).decode()}

    assert (
        post(client, event(email.message_id), secret=None, headers=basic("mta:basic-password-0123456789")).status_code
        == 202
    )
    refused = post(client, event(email.message_id, "complained"), secret=None, headers=basic("mta:guess"))
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Basic")
    assert (
        post(client, event(email.message_id), secret=None, headers={"HTTP_AUTHORIZATION": "Basic !!"}).status_code
        == 401
    )
    run = consume()
    assert run.totals.applied == 1
    email.refresh_from_db()
    assert email.status == Status.DELIVERED


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "not JSON"),
        (b"[]", "no events"),
        (
            json.dumps([{"message_id": "<a@b>", "event": "delivered", "timestamp": 1}, {"event": "x"}]).encode(),
            "event 1",
        ),
    ],
)
@pytest.mark.django_db
def test_malformed_bodies_get_400_and_nothing_is_queued(client, webhook, body, fragment, settings):
    settings.TRACKING_QUEUE_URL = ""
    response = post(client, None, body=body)
    assert response.status_code == 400 and fragment in response.json()["error"]
    assert not TrackingQueueItem.objects.exists()


@pytest.mark.django_db
def test_only_post_and_only_when_enabled(client, webhook, settings):
    assert client.get(URL).status_code == 405
    settings.TRACKING_WEBHOOK_ENABLED = False
    assert post(client, event("<a@b>")).status_code == 404


def test_an_enabled_endpoint_without_secrets_stops_start_up():
    env = subprocess_env(TRACKING_WEBHOOK_ENABLED="true", TRACKING_WEBHOOK_SECRETS="", TRACKING_WEBHOOK_BASIC_AUTH="")
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "TRACKING_WEBHOOK_SECRETS" in result.stderr and "required" in result.stderr
    short = manage("check", env=subprocess_env(TRACKING_WEBHOOK_ENABLED="true", TRACKING_WEBHOOK_SECRETS="short"))
    assert short.returncode != 0 and "at least 16" in short.stderr
    ok = manage("check", env=subprocess_env(TRACKING_WEBHOOK_ENABLED="true", TRACKING_WEBHOOK_SECRETS=NEW))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.django_db(transaction=True)
def test_when_the_queue_is_down_the_answer_is_503_and_nothing_is_lost(client, webhook, queue_backend, settings):
    first, second = TextOfEmailFactory(status=Status.SENT), TextOfEmailFactory(status=Status.SENT)
    proxy = None
    if queue_backend == "rabbitmq":
        proxy = TCPProxy().start()
        settings.TRACKING_QUEUE_URL = proxy.url
    assert post(client, event(first.message_id)).status_code == 202

    table = connection.ops.quote_name(TrackingQueueItem._meta.db_table)
    if proxy:
        proxy.stop()  # the broker goes away under an open connection
    else:
        with connection.cursor() as cursor:  # the queue's storage goes away
            cursor.execute(f"ALTER TABLE {table} RENAME TO tracking_queue_away")
    try:
        down = post(client, event(second.message_id))
        assert down.status_code == 503 and down["Retry-After"] == "60"
    finally:
        if proxy:
            proxy.start()
        else:
            with connection.cursor() as cursor:
                cursor.execute(f"ALTER TABLE tracking_queue_away RENAME TO {table}")
    # The MTA retries the refused callback once the queue is back.
    assert post(client, event(second.message_id)).status_code == 202
    assert consume().totals.applied == 2
    assert set(TextOfEmail.objects.values_list("status", flat=True)) == {Status.DELIVERED}
    if proxy:
        proxy.stop()


@pytest.mark.django_db
def test_the_readme_recipe_for_signing_with_openssl_is_accepted(client, webhook, settings):
    import subprocess

    settings.TRACKING_QUEUE_URL = ""
    email = TextOfEmailFactory(status=Status.SENT)
    body = json.dumps(event(email.message_id)).encode()
    ts = str(int(time.time()))
    digest = (
        subprocess.run(
            ["openssl", "dgst", "-sha256", "-hmac", NEW, "-r"],
            input=ts.encode() + b"." + body,
            capture_output=True,
            check=True,
        )
        .stdout.split()[0]
        .decode()
    )
    response = client.post(
        URL,
        body,
        content_type="application/json",
        HTTP_X_MAILSITE_TIMESTAMP=ts,
        HTTP_X_MAILSITE_SIGNATURE=f"sha256={digest}",
    )
    assert response.status_code == 202


def test_a_queue_url_that_is_not_amqp_stops_start_up_without_showing_the_password():
    result = manage("check", env=subprocess_env(TRACKING_QUEUE_URL="redis://u:hunter2@localhost/0"))
    assert result.returncode != 0 and "TRACKING_QUEUE_URL must be an amqp://" in result.stderr
    assert "hunter2" not in result.stderr


# --- Bearer tokens: what many MTAs' status notifiers send ---

TOKEN, NEXT_TOKEN = "bearer-token-0123456789abcdef", "next-bearer-token-0123456789"


def bearer(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.mark.django_db
def test_a_bearer_token_is_a_third_way_in_and_several_allow_rotation(client, webhook, settings, queue_backend):
    settings.TRACKING_WEBHOOK_BEARER_TOKENS = [NEXT_TOKEN, TOKEN]
    email = TextOfEmailFactory(status=Status.SENT)
    assert post(client, event(email.message_id), secret=None, headers=bearer(TOKEN)).status_code == 202
    assert post(client, event(email.message_id, "opened"), secret=None, headers=bearer(NEXT_TOKEN)).status_code == 202
    assert consume().totals.applied == 2
    email.refresh_from_db()
    assert email.status == Status.DELIVERED


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-the-token-0123456789abc",
        f"Bearer {TOKEN[:-1]}",  # one character short
        f"Bearer {TOKEN}x",
        "Bearer ",
        f"Token {TOKEN}",  # another scheme
        f"Basic {base64.b64encode(TOKEN.encode()).decode()}",
    ],
)
@pytest.mark.django_db
def test_a_forged_bearer_token_is_refused_and_changes_nothing(client, webhook, settings, authorization):
    settings.TRACKING_QUEUE_URL = ""
    settings.TRACKING_WEBHOOK_BEARER_TOKENS = [TOKEN]
    email = TextOfEmailFactory(status=Status.SENT)
    response = post(client, event(email.message_id), secret=None, headers={"HTTP_AUTHORIZATION": authorization})
    assert response.status_code == 401 and "error" in response.json()
    assert "Bearer" in response["WWW-Authenticate"] and "Basic" in response["WWW-Authenticate"]
    assert nothing_queued()


@pytest.mark.django_db
def test_bearer_tokens_are_refused_where_none_are_configured(client, webhook, settings):
    settings.TRACKING_WEBHOOK_BEARER_TOKENS = []
    response = post(client, event("<a@b>"), secret=None, headers=bearer(TOKEN))
    assert response.status_code == 401 and "TRACKING_WEBHOOK_BEARER_TOKENS" in response.json()["error"]
    assert response["WWW-Authenticate"].startswith("Basic")


@pytest.mark.django_db
def test_an_unsigned_replay_is_accepted_and_applied_once(client, webhook, settings):
    """Bearer and Basic have no signature to remember: the event id (given or derived) catches the repeat."""
    settings.TRACKING_QUEUE_URL = ""
    settings.TRACKING_WEBHOOK_BEARER_TOKENS = [TOKEN]
    email = TextOfEmailFactory(status=Status.SENT)
    without_id = {
        k: v for k, v in event(email.message_id, "bounced", diagnostic="550 5.1.1").items() if k != "event_id"
    }
    for _ in range(2):
        assert post(client, without_id, secret=None, headers=bearer(TOKEN)).status_code == 202
    run = consume()
    assert (run.totals.applied, run.totals.duplicates) == (1, 1)
    assert email.events.filter(kind="tracking").count() == 1


def test_bearer_tokens_alone_may_enable_the_endpoint_and_must_be_long():
    alone = manage(
        "check",
        env=subprocess_env(TRACKING_WEBHOOK_ENABLED="true", TRACKING_WEBHOOK_BEARER_TOKENS=f"{TOKEN},{NEXT_TOKEN}"),
    )
    assert alone.returncode == 0, alone.stderr
    short = manage("check", env=subprocess_env(TRACKING_WEBHOOK_BEARER_TOKENS=f"{TOKEN},short-token"))
    assert short.returncode != 0
    assert "Setting TRACKING_WEBHOOK_BEARER_TOKENS: each token must be at least 16 characters" in short.stderr
    assert "short-token" not in short.stderr
