"""A sender whose database connections are terminated mid-run (pg_terminate_backend), in a real child process.

A one-shot dbmail_cron says so in one line and exits 1; dbmail_cron --loop
goes on. Either way the emails it held are given back as soon as the
database answers (not when their lease runs out), the outcomes it had not
committed yet are written, and nothing is sent twice.
"""

import signal
import threading
from collections import Counter
from datetime import timedelta

import psycopg2
import pytest
from django.db import connection
from django.utils import timezone

from dbmail import states
from dbmail.exceptions import DatabaseLost
from dbmail.models import MessageRequest, TextOfEmail
from dbmail.send import loop as sending

from .conftest import start_manage, subprocess_env, wait_until
from .factories import MessageRequestFactory, SenderAccountFactory, queue_emails

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
Status = states.EmailStatus


def queue(n):
    due = timezone.now() - timedelta(minutes=1)
    queue_emails(n, next_attempt_at=due)
    return due


def cron(smtp_server, *args):
    # A lease far longer than the test: whatever is given back was given back by the sender itself.
    env = subprocess_env(smtp_server, DBMAIL_LEASE_SECONDS=3600, DBMAIL_BATCH_SIZE=20)
    return start_manage("dbmail_cron", *args, env=env)


def terminate_other_backends():
    """pg_terminate_backend on every connection to the test database but this one: the sender's, both threads."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_a_one_shot_run_exits_in_one_line_and_gives_its_claims_back(smtp_server):
    due = queue(300)
    smtp_server.delay = 0.02  # about 6 s of sending: time to cut it off midway
    proc = cron(smtp_server)
    wait_until(lambda: len(smtp_server.received) >= 30)
    assert terminate_other_backends() >= 2  # the sender's own connection and its database thread's
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("CommandError: lost the database connection while sending (") and "given back" in err

    received = Counter(m.message_id for m in smtp_server.received)
    rows = dict(TextOfEmail.objects.values_list("message_id", "status"))
    assert Status.SENDING not in rows.values()  # nothing left to the lease
    # Every message the server took is recorded as sent; every other one is back where it was.
    assert {mid for mid, status in rows.items() if status == Status.SENT} == set(received)
    waiting = TextOfEmail.objects.exclude(status=Status.SENT)
    assert set(waiting.values_list("status", "attempts", "next_attempt_at")) == {(Status.QUEUED, 0, due)}

    # The next run sends the rest, and nothing twice.
    again = cron(smtp_server)
    again.communicate(timeout=120)
    assert again.returncode == 0
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == set(rows) and max(received.values()) == 1
    # Given back, not taken over from a dead sender: nothing is marked possibly delivered (dbmail.send.takeover).
    assert not TextOfEmail.objects.filter(possibly_delivered__gt=0).exists()


def test_a_loop_reconnects_and_goes_on(smtp_server):
    queue(300)
    smtp_server.delay = 0.02
    proc = cron(smtp_server, "--loop", "--interval", "1")
    try:
        wait_until(lambda: len(smtp_server.received) >= 30)
        terminate_other_backends()
        # The failed round's claims were given back at once; the next round (after a pause) goes on to the end.
        wait_until(lambda: len(smtp_server.received) >= 300, seconds=90)
        wait_until(lambda: not TextOfEmail.objects.exclude(status=Status.SENT).exists(), seconds=30)
        assert proc.poll() is None  # still running
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "dbmail_cron: lost the database connection while sending" in err
    received = Counter(m.message_id for m in smtp_server.received)
    assert len(received) == 300 and max(received.values()) == 1


def test_a_connection_lost_between_two_requests_drops_none_of_their_emails(smtp_server):
    # The sender reads each request's attachments on its own connection when it reaches the request's
    # first email, while its database thread (another connection) writes the outcomes. Only the first
    # connection is terminated here: a database error there is the database's fault, not the message's
    # (it once dropped every email left, "cannot build message: InterfaceError: connection already closed").
    due = timezone.now() - timedelta(minutes=1)
    account = SenderAccountFactory()
    for i in range(10):
        request = MessageRequestFactory(sender=account, status=MessageRequest.Status.EXPANDED)
        queue_emails(10, start=10 * i, account=account, request=request, next_attempt_at=due)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (own,) = cursor.fetchone()

    def terminate_when_under_way():
        wait_until(lambda: len(smtp_server.received) >= 15, seconds=30)
        with psycopg2.connect(**connection.get_connection_params()) as other, other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [own])
        other.close()

    smtp_server.delay = 0.01
    killer = threading.Thread(target=terminate_when_under_way)
    killer.start()
    with pytest.raises(DatabaseLost) as lost:
        sending.send_due(batch_size=100)
    killer.join(timeout=30)
    lost.value.leftovers.give_back()

    dropped = TextOfEmail.objects.filter(status=Status.DROPPED)
    assert not dropped.exists(), f"{dropped.count()} dropped: {dropped.first().last_error}"
    assert not TextOfEmail.objects.filter(status=Status.SENDING).exists()
    received = Counter(m.message_id for m in smtp_server.received)
    rows = dict(TextOfEmail.objects.values_list("message_id", "status"))
    assert {mid for mid, status in rows.items() if status == Status.SENT} == set(received)
    waiting = TextOfEmail.objects.exclude(status=Status.SENT)
    assert waiting.exists()
    assert set(waiting.values_list("status", "attempts", "next_attempt_at")) == {(Status.QUEUED, 0, due)}
