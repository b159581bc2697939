import os
import signal
import subprocess
import sys
import time

import pytest

from dbmail.models import CronHeartbeat, DeliveryEvent, TextOfEmail
from dbmail.track.consume import consume
from dbmail.track.queue import publish, publish_many

from .conftest import ROOT, manage, subprocess_env
from .factories import TextOfEmailFactory
from .tracking_support import tracked

Status = TextOfEmail.Status

# A consumer that stops dead between its commit and its acknowledgement: the test SIGKILLs it there.
STALLS_BEFORE_ACK = """
import sys, time, django
django.setup()
from dbmail.track import queue as tracking_queue

def ack(self, deliveries):
    with open(sys.argv[1], "w") as marker:
        marker.write(str(len(deliveries)))
    time.sleep(120)

tracking_queue.DatabaseQueue.ack = tracking_queue.RabbitQueue.ack = ack
from django.core.management import call_command
call_command("dbmail_track")
"""


def queue_env(settings, **extra):
    return subprocess_env(
        TRACKING_QUEUE_URL=settings.TRACKING_QUEUE_URL,
        TRACKING_EXCHANGE=settings.TRACKING_EXCHANGE,
        TRACKING_QUEUE=settings.TRACKING_QUEUE,
        **extra,
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_consumer_killed_before_its_ack_leaves_every_event_applied_once(queue_backend, settings, tmp_path):
    emails = TextOfEmailFactory.create_batch(3, status=Status.SENT)
    publish_many([tracked(e.message_id, "delivered") for e in emails])
    publish(tracked(emails[0].message_id, "bounced", diagnostic="550 5.1.1 gone"))
    marker = tmp_path / "before-ack"
    env = queue_env(settings, DBMAIL_LEASE_SECONDS="1")
    child = subprocess.Popen([sys.executable, "-c", STALLS_BEFORE_ACK, str(marker)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the consumer never reached its acknowledgement"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert marker.read_text() == "4"
    # Its transaction had committed: the statuses are there, the events are not acknowledged.
    assert sorted(TextOfEmail.objects.values_list("status", flat=True)) == ["bounced", "delivered", "delivered"]
    time.sleep(1.2)  # the database backend hands them out again once the dead consumer's lease has run out

    again = manage("dbmail_track", "-v", "2", env=queue_env(settings))
    assert again.returncode == 0, again.stderr
    assert "applied 0 (0 changed a status), duplicates 4" in again.stdout
    assert DeliveryEvent.objects.filter(kind="tracking").count() == 4
    assert consume().batches == 0  # acknowledged this time


@pytest.mark.django_db
def test_a_run_reports_and_records_a_heartbeat(queue_backend):
    email = TextOfEmailFactory(status=Status.SENT)
    publish(tracked(email.message_id))
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("dbmail_track", "--batch-size", "1", verbosity=2, stdout=out)
    assert "applied 1 (1 changed a status)" in out.getvalue() and "1 batch" in out.getvalue()
    beat = CronHeartbeat.objects.get(command="dbmail_track")
    assert beat.last_success_at and beat.last_summary["applied"] == 1
    quiet = StringIO()
    call_command("dbmail_track", verbosity=1, stdout=quiet)
    assert quiet.getvalue() == ""  # under cron, silence


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_queue_fails_the_run():
    result = manage("dbmail_track", env=subprocess_env(TRACKING_QUEUE_URL="amqp://guest:guest@127.0.0.1:1/%2F"))
    assert result.returncode == 1
    assert "cannot read from RabbitMQ" in result.stderr
    assert CronHeartbeat.objects.get(command="dbmail_track").last_error


@pytest.mark.django_db(transaction=True)
def test_loop_keeps_applying_until_terminated(tmp_path):
    email = TextOfEmailFactory(status=Status.SENT)
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dbmail_track", "--loop", "--interval", "0.2"],
        env=subprocess_env(TRACKING_QUEUE_URL=""),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        publish(tracked(email.message_id))
        deadline = time.monotonic() + 30
        while TextOfEmail.objects.get(pk=email.pk).status != Status.DELIVERED and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert TextOfEmail.objects.get(pk=email.pk).status == Status.DELIVERED
    assert child.returncode == 0, err


def test_follow_log_needs_a_format():
    result = manage("dbmail_track", "--follow-log", "/var/log/mail.log")
    assert result.returncode == 1 and "--format" in result.stderr
