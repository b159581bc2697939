"""kill -9 rounds: several real dbmail_cron processes killed at random moments, restarted, again.

What an operator's crash test does to the promise of docs/scaling.md#exactly-once-on-any-number-of-hosts:
three senders share a queue of a few thousand emails and a request being expanded; each round
kills them with SIGKILL at a moment drawn from a fixed seed (so a failure repeats), one round
also kills a sender's PostgreSQL backend (pg_terminate_backend) and one restarts the SMTP server
under them. Then, with the leases run out, one run finishes the work, and:

- every email is final (nothing stuck in "sending" after its lease), the server saw each one;
- duplicates are no more than the window allows for the senders that were killed, and each is
  marked "possibly delivered" (a lost answer by the sender that lost it; a kill between the
  server's 250 and the outcome's commit by the claim that takes the row over);
- the request's counts are its emails', the dashboard's roll-up counts each outcome once,
  and the delivery log names no missing email and has one "sent" attempt per email.
"""

import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Sum

from dbmail import rollup
from dbmail.models import DailyStat, DailyStatDelta, DeliveryEvent, MessageRequest, TextOfEmail
from dbmail.send import dbworker, takeover

from .conftest import ROOT, start_manage, subprocess_env, wait_until
from .factories import MessageRequestFactory, queue_emails
from .test_health import status
from .test_recovery import terminate_other_backends

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
Status = TextOfEmail.Status
LEASE = 2
WINDOW = 32
QUEUED, USERS = 1500, 1000


def start(env, log):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dbmail_cron", "--batch-size", "50"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def progress(smtp_server, procs, received):
    return lambda: len(smtp_server.received) >= received or all(p.poll() is not None for p in procs)


def test_rounds_of_kill_9_lose_nothing_and_duplicate_within_the_window(smtp_server, tmp_path):
    rng = random.Random(20261201)
    expected = queue_emails(QUEUED)
    User = get_user_model()
    User.objects.bulk_create(
        User(username=f"k{i:05d}", email=f"k{i:05d}@example.org", first_name=f"N{i}") for i in range(USERS)
    )
    request = MessageRequestFactory(recipient_set="all_active")
    smtp_server.delay = 0.002  # keep the senders mid-batch when they are killed
    # Each sends in its own process: the children of a run whose parent is killed would stop cleanly.
    env = subprocess_env(
        smtp_server,
        DBMAIL_LEASE_SECONDS=LEASE,
        DBMAIL_EXPAND_CHUNK=200,
        DBMAIL_OUTCOME_WINDOW=WINDOW,
        DBMAIL_SEND_PROCESSES=1,
    )
    log = (tmp_path / "cron.log").open("wb")
    kills = 0
    for round_ in range(4):
        procs = [start(env, log) for _ in range(3)]
        # Some progress first, so each kill lands in the middle of claims, conversations and outcome writes.
        wait_until(progress(smtp_server, procs, len(smtp_server.received) + 50), 60)
        if round_ == 1:
            assert terminate_other_backends() >= 1
        if round_ == 2:
            smtp_server.stop()
            time.sleep(0.3)
            smtp_server.start()
        for proc in procs:
            time.sleep(rng.uniform(0.05, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
        time.sleep(rng.uniform(0, LEASE))  # some leases run out before the next round, some do not

    time.sleep(LEASE + 0.5)
    smtp_server.delay = 0
    for _ in range(3):  # a run meets at most its start's due mail; deferred mail waits its backoff
        proc = start(env, log)
        assert proc.wait(timeout=300) == 0, (tmp_path / "cron.log").read_text()
        if not TextOfEmail.objects.exclude(status=Status.SENT).exists():
            break
        TextOfEmail.objects.filter(status=Status.DEFERRED).update(next_attempt_at=request.created_at)
    log.close()

    request.refresh_from_db()
    emails = TextOfEmail.objects.all()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == USERS
    expected |= set(emails.filter(request=request).values_list("message_id", flat=True))
    assert len(expected) == QUEUED + USERS
    # Every email final, the server saw each.
    left = Counter(emails.exclude(status=Status.SENT).values_list("status", flat=True))
    errors = Counter(emails.exclude(status=Status.SENT).values_list("last_error", flat=True))
    assert not left, f"not sent: {dict(left)}: {errors.most_common(3)}"
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == expected, "lost: " + ", ".join(sorted(expected - set(received))[:5])
    # Each duplicate is marked, and there are no more than the window allows per killed sender.
    twice = {mid for mid, n in received.items() if n > 1}
    marked = set(emails.filter(possibly_delivered__gt=0).values_list("message_id", flat=True))
    print(f"{kills} kills, {sum(received.values()) - len(received)} duplicates, {len(marked)} marked")
    # A lost answer (the SMTP server's restart) is marked by its sender; a message answered but not yet
    # recorded when its sender was killed, by the claim that takes it over (dbmail.send.takeover).
    assert twice <= marked, f"{len(twice - marked)} unmarked duplicates"
    assert sum(received.values()) - len(received) <= kills * (WINDOW + 1)
    # Up to the window for each killed sender, and once more for a claim it had made ahead whose lease
    # ran out only after the rest was taken over (dbmail.send.takeover).
    taken_over = DeliveryEvent.objects.filter(text=takeover.TEXT).count()
    assert taken_over <= kills * 2 * (WINDOW + 1)
    # The request's counts are its emails'; the roll-up counted each "sent" once.
    assert request.status_counts() == {Status.SENT: USERS}
    assert rollup.per_request([request.pk])[request.pk][Status.SENT] == USERS
    counted = sum(m.objects.aggregate(n=Sum(Status.SENT))["n"] or 0 for m in (DailyStat, DailyStatDelta))
    assert counted == QUEUED + USERS
    # The log: nothing for a missing email, one "sent" attempt per email.
    assert not DeliveryEvent.objects.exclude(email_id__in=emails.values("pk")).exists()
    sent_events = (
        DeliveryEvent.objects.filter(kind=DeliveryEvent.Kind.ATTEMPT, outcome=Status.SENT)
        .values("email_id")
        .annotate(n=Count("id"))
    )
    assert all(row["n"] == 1 for row in sent_events) and len(sent_events) == QUEUED + USERS


def other_backends():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def one_sender(smtp_server):
    """A dbmail_cron that sends in its own process: a child whose parent is killed would stop cleanly."""
    env = subprocess_env(
        smtp_server,
        DBMAIL_LEASE_SECONDS=LEASE,
        DBMAIL_OUTCOME_WINDOW=WINDOW,
        DBMAIL_BATCH_SIZE=50,
        DBMAIL_SEND_PROCESSES=1,
    )
    return start_manage("dbmail_cron", env=env)


def finish(smtp_server):
    """After the leases ran out, one run sends the rest."""
    time.sleep(LEASE + 0.5)
    smtp_server.delay = 0
    proc = one_sender(smtp_server)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not TextOfEmail.objects.exclude(status=Status.SENT).exists()


def test_a_killed_senders_possible_duplicates_are_marked_when_its_rows_are_taken_over(smtp_server):
    queue_emails(1500)
    smtp_server.delay = 0.002
    dead_senders, unrecorded = 0, set()
    for _ in range(5):  # until a kill lands with a message answered and its outcome not committed
        proc = one_sender(smtp_server)
        wait_until(progress(smtp_server, [proc], len(smtp_server.received) + 100), 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not other_backends(), 30)  # a commit under way when it died is done (or not) by then
        held = TextOfEmail.objects.filter(status=Status.SENDING)
        dead_senders += 1
        unrecorded = {m.message_id for m in smtp_server.received} & set(held.values_list("message_id", flat=True))
        if unrecorded:
            break
    assert unrecorded, "no kill landed between a message's answer and its outcome's commit"
    finish(smtp_server)

    received = Counter(m.message_id for m in smtp_server.received)
    twice = {mid for mid, n in received.items() if n > 1}
    assert twice and unrecorded <= twice
    emails = TextOfEmail.objects.all()
    marked = set(emails.filter(possibly_delivered__gt=0).values_list("message_id", flat=True))
    print(f"{dead_senders} killed, {len(twice)} duplicates, {len(marked)} marked")
    assert twice <= marked, f"{len(twice - marked)} of {len(twice)} duplicates unmarked"
    # Not the killed senders' whole claims: at most the crash window of each, once more for a claim it made
    # ahead whose lease ran out after the rest was taken over.
    assert len(marked) <= dead_senders * 2 * dbworker.crash_window()
    logged = DeliveryEvent.objects.filter(text=takeover.TEXT).values_list("email__message_id", flat=True)
    assert sorted(logged) == sorted(marked)
    code, out = status()
    assert f"outcome unknown (possibly delivered): {len(marked)} emails" in out, out


def test_a_stopped_sender_gives_its_rows_back_and_nothing_is_marked(smtp_server):
    queue_emails(1500)
    smtp_server.delay = 0.002
    proc = one_sender(smtp_server)
    wait_until(progress(smtp_server, [proc], 100), 60)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not TextOfEmail.objects.filter(status=Status.SENDING).exists()
    finish(smtp_server)
    received = Counter(m.message_id for m in smtp_server.received)
    assert len(received) == 1500 and max(received.values()) == 1
    assert not TextOfEmail.objects.filter(possibly_delivered__gt=0).exists()
    assert not DeliveryEvent.objects.filter(text=takeover.TEXT).exists()
