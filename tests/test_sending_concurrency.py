"""Several real sender processes against one PostgreSQL queue and one SMTP server."""

import signal
import time
from collections import Counter

import pytest
from django.contrib.auth import get_user_model

from dbmail.models import MessageRequest, TextOfEmail

from .conftest import start_manage, subprocess_env, wait_until
from .factories import MessageRequestFactory, queue_emails

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
Status = TextOfEmail.Status


def cron(env, *args):
    return start_manage("dbmail_cron", *args, env=env)


def test_four_senders_deliver_every_email_exactly_once(smtp_server):
    expected = queue_emails(2000)
    env = subprocess_env(smtp_server)
    procs = [cron(env, "--batch-size", "50") for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == expected
    assert max(received.values()) == 1
    assert TextOfEmail.objects.exclude(status=Status.SENT).count() == 0
    # Each process really took part (the work was shared, not done by whoever started first).
    assert len({m.rcpt_tos[0] for m in smtp_server.received}) == 2000


def test_a_killed_sender_loses_nothing_and_duplicates_at_most_the_window(smtp_server, settings):
    expected = queue_emails(300)
    smtp_server.delay = 0.01  # keep the sender mid-batch when it is killed
    env = subprocess_env(smtp_server, DBMAIL_LEASE_SECONDS=5)
    victim = cron(env, "--batch-size", "100")
    wait_until(lambda: len(smtp_server.received) >= 40)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = time.monotonic()
    smtp_server.delay = 0
    held = TextOfEmail.objects.filter(status=Status.SENDING).count()
    assert held > 0  # the rest of its batch is still under its lease

    # Before the lease runs out, another sender leaves the held rows alone.
    second = cron(env)
    second.communicate(timeout=120)
    assert TextOfEmail.objects.filter(status=Status.SENDING).count() == held

    assert time.monotonic() - killed_at < 5, "the check above ran after the lease expired"
    time.sleep(max(0.0, 5.5 - (time.monotonic() - killed_at)))
    third = cron(env)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == expected  # none lost
    duplicates = sum(n - 1 for n in received.values())
    print(f"duplicates after kill -9: {duplicates} (window {settings.DBMAIL_OUTCOME_WINDOW} + 1)")
    # Only answered messages whose outcomes were not committed yet: the documented window.
    assert duplicates <= settings.DBMAIL_OUTCOME_WINDOW + 1
    assert TextOfEmail.objects.exclude(status=Status.SENT).count() == 0


def test_expansion_of_10000_killed_midway_resumes_without_duplicates():
    User = get_user_model()
    User.objects.bulk_create(
        User(username=f"u{i:05d}", email=f"u{i:05d}@example.org", first_name=f"N{i}") for i in range(10000)
    )
    request = MessageRequestFactory(recipient_set="all_active")
    env = subprocess_env(DBMAIL_LEASE_SECONDS=2, DBMAIL_EXPAND_CHUNK=250)
    victim = cron(env, "--max-messages", "0")  # expand only
    wait_until(lambda: TextOfEmail.objects.count() >= 1500)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    partial = TextOfEmail.objects.count()
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDING and partial < 10000

    time.sleep(2.5)
    again = cron(env, "--max-messages", "0")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == 10000
    assert TextOfEmail.objects.count() == 10000
    assert TextOfEmail.objects.values("to_address").distinct().count() == 10000
