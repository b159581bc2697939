"""DBMAIL_API_SEND_RATE (dbmail.intake.api.throttling): a per-user count in the database, shared by every process."""

import threading

import pytest
from django.db import connection

from dbmail.intake.api import throttling
from dbmail.models import ApiRateCounter

from .conftest import manage, subprocess_env
from .sendingapi import client_for, composer

SEND = {"to": "cy@example.net", "subject": "s", "text": "t"}


@pytest.mark.django_db
def test_past_the_rate_sending_calls_get_429_with_retry_after(settings, smtp_server):
    settings.DBMAIL_API_SEND_RATE = "3/min"
    ann, bob = composer("ann"), composer("bob")
    api = client_for(ann)
    answers = [api.post("/api/v1/send/", SEND, format="json").status_code for _ in range(3)]
    answers.append(api.post("/api/v1/requests/", {}, format="json").status_code)  # a bad one counts too
    assert answers == [201, 201, 201, 429]
    refused = api.post("/api/v1/send/", SEND, format="json")
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 60
    assert "throttled" in refused.json()["detail"].lower()
    # Reading is not sending; and another user has a count of their own.
    assert api.get("/api/v1/requests/").status_code == 200 and api.get("/api/v1/send/").status_code == 200
    assert client_for(bob).post("/api/v1/send/", SEND, format="json").status_code == 201
    settings.DBMAIL_API_SEND_RATE = "off"
    assert api.post("/api/v1/send/", SEND, format="json").status_code == 201


@pytest.mark.django_db
def test_a_new_window_starts_from_one():
    assert throttling.hit("u", 60, now=120.0) == (1, 2)
    assert throttling.hit("u", 60, now=179.9) == (2, 2)
    assert throttling.hit("u", 60, now=180.0) == (1, 3)
    assert throttling.hit("v", 60, now=180.0) == (1, 3)
    assert ApiRateCounter.objects.count() == 2  # one row per user, never one per window


def test_the_rate_setting_is_read_as_written():
    assert throttling.parse_rate("120/min") == (120, 60)
    assert throttling.parse_rate("5/second") == (5, 1)
    assert throttling.parse_rate("1000/day") == (1000, 86400)
    assert throttling.parse_rate("off") is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_from_threads_and_another_process_share_one_count():
    counts, lock = [], threading.Lock()

    def calls():
        try:
            for _ in range(25):
                hits, _window = throttling.hit("shared", 3600)
                with lock:
                    counts.append(hits)
        finally:
            connection.close()

    threads = [threading.Thread(target=calls) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(counts) == list(range(1, 151))  # no call lost, none counted twice

    child = manage(
        "shell",
        "--no-imports",
        "-c",
        "from dbmail.intake.api.throttling import hit; print(hit('shared', 3600)[0])",
        env=subprocess_env(),
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "151"
    assert throttling.hit("shared", 3600)[0] == 152
