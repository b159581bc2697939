"""One dbmail_cron run sending with several processes (dbmail.ops.processes, issue 16 point 1).

Real child processes, real PostgreSQL and a real SMTP server on loopback: the
server counts connections, one per sending process.
"""

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from django.core.management import call_command

from dbmail.models import CronHeartbeat, TextOfEmail
from dbmail.ops import processes
from dbmail.ops.cron import how_many, send_processes

from .conftest import ROOT, start_manage, subprocess_env, wait_until
from .factories import SenderAccountFactory, queue_emails
from .test_conf import app_errors
from .test_settings import run_manage

Status = TextOfEmail.Status
db = pytest.mark.django_db(transaction=True)


def cron(env, *args):
    return start_manage("dbmail_cron", *args, env=env)


def children_of(pid):
    """The pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def summary(out):
    lines = [line for line in out.splitlines() if line.startswith("dbmail_cron: expanded")]
    assert len(lines) == 1, out
    return lines[0]


def sent_count(line):
    return int(re.search(r"sent (\d+),", line).group(1))


# --- which runs fork -------------------------------------------------------------------------------


def test_a_run_forks_only_for_enough_mail_and_splits_max_messages():
    assert how_many(4, 0, 100) == 1  # an empty queue: in-process, no fork
    assert how_many(4, 799, 100) == 1  # under two processes' worth of batches
    assert how_many(4, 800, 100) == 2
    assert how_many(4, 100_000, 100) == 4
    assert how_many(1, 100_000, 100) == 1
    assert processes.shares(None, 3) == [None, None, None]
    assert processes.shares(1001, 2) == [501, 500] and sum(processes.shares(7, 3)) == 7
    assert send_processes("auto") == len(os.sched_getaffinity(0)) and send_processes("3") == 3


@db
def test_few_due_emails_are_sent_in_process(smtp_server):
    expected = queue_emails(30)
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "dbmail_cron", "--processes", "4", "--batch-size", "5", "-v", "2"],
        env=subprocess_env(smtp_server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "sent 30, deferred 0, dropped 0" in summary(done.stdout)
    assert {m.message_id for m in smtp_server.received} == expected
    assert smtp_server.connections == 1  # one process, one connection (4 would share 6 batches between them)


# --- exactly once, one summary ---------------------------------------------------------------------


@db
@pytest.mark.slow
def test_three_processes_send_every_email_exactly_once_and_report_one_summary(smtp_server):
    expected = queue_emails(3000)
    proc = cron(subprocess_env(smtp_server), "--processes", "3", "--batch-size", "50", "-v", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "expanded 0 requests (0 emails); sent 3000, deferred 0, dropped 0 in " in summary(out)
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == expected and max(received.values()) == 1
    assert TextOfEmail.objects.exclude(status=Status.SENT).count() == 0
    assert smtp_server.connections == 3  # each child sent over its own connection
    assert CronHeartbeat.objects.get(command="dbmail_cron").last_summary["sent"] == 3000


@db
@pytest.mark.slow
def test_max_messages_is_the_total_of_all_processes(smtp_server):
    queue_emails(2000)
    proc = cron(
        subprocess_env(smtp_server), "--processes", "2", "--batch-size", "50", "--max-messages", "1001", "-v", "2"
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "sent 1001, deferred 0, dropped 0" in summary(out)
    assert len(smtp_server.received) == 1001 and smtp_server.connections == 2
    assert TextOfEmail.counts(TextOfEmail.objects.all()) == {"sent": 1001, "queued": 999}


@db
@pytest.mark.slow
def test_failures_in_the_children_are_reported_as_one_run(smtp_server):
    queue_emails(1000)
    smtp_server.script("r00007@example.net", "550 5.1.1 unknown")
    smtp_server.script("r00900@example.net", "451 4.3.0 try later")
    proc = cron(subprocess_env(smtp_server), "--processes", "2", "--batch-size", "50")  # not -v 2: only failures
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "sent 998, deferred 1, dropped 1" in summary(out)
    assert "r00007@example.net: 5.1.1 unknown" in out and "r00900@example.net: 4.3.0 try later" in out
    assert smtp_server.connections == 2


# --- stops, kills ----------------------------------------------------------------------------------


@db
@pytest.mark.slow
def test_sigterm_mid_run_stops_every_child_with_nothing_held_and_nothing_lost(smtp_server):
    expected = queue_emails(1500)
    smtp_server.delay = 0.005  # keep them mid-batch
    env = subprocess_env(smtp_server)
    proc = cron(env, "--processes", "2", "--batch-size", "50", "-v", "2")
    wait_until(lambda: len(smtp_server.received) >= 200)
    assert len(children_of(proc.pid)) == 2
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    sent = sent_count(summary(out))
    assert 200 <= sent < 1500
    assert not TextOfEmail.objects.filter(status=Status.SENDING).exists()  # every claim given back
    assert TextOfEmail.objects.filter(status=Status.SENT).count() == len(smtp_server.received) == sent
    assert TextOfEmail.objects.filter(status=Status.QUEUED, attempts=0).count() == 1500 - sent  # as they were

    smtp_server.delay = 0
    again = cron(env, "--processes", "2", "--batch-size", "50")
    again.communicate(timeout=300)
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == expected and max(received.values()) == 1


@db
@pytest.mark.slow
def test_a_child_killed_by_kill_9_loses_nothing_and_a_later_run_sends_the_rest(smtp_server, settings):
    expected = queue_emails(1500)
    smtp_server.delay = 0.005
    env = subprocess_env(smtp_server, DBMAIL_LEASE_SECONDS=4)
    proc = cron(env, "--processes", "2", "--batch-size", "50")
    wait_until(lambda: len(smtp_server.received) >= 200)
    victim, survivor = children_of(proc.pid)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    smtp_server.delay = 0
    out, err = proc.communicate(timeout=300)  # the other child goes on to the end
    assert proc.returncode == 1
    assert f"sending process {victim} was killed by signal 9" in err and "Traceback" not in err
    assert TextOfEmail.objects.filter(status=Status.SENDING).exists()  # the victim's claims, under their lease
    assert not alive(survivor)

    time.sleep(max(0.0, 4.5 - (time.monotonic() - killed_at)))
    later = cron(env, "--processes", "2", "--batch-size", "50")
    out, err = later.communicate(timeout=300)
    assert later.returncode == 0, err
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == expected  # none lost
    # Only the victim's answered messages whose outcomes were not committed: the documented window.
    assert sum(n - 1 for n in received.values()) <= settings.DBMAIL_OUTCOME_WINDOW + 1
    assert TextOfEmail.objects.exclude(status=Status.SENT).count() == 0


@db
@pytest.mark.slow
def test_children_whose_parent_died_stop_cleanly(smtp_server):
    queue_emails(1500)
    smtp_server.delay = 0.005
    proc = cron(subprocess_env(smtp_server), "--processes", "2", "--batch-size", "50")
    wait_until(lambda: len(smtp_server.received) >= 100)
    children = children_of(proc.pid)
    assert len(children) == 2
    proc.kill()
    proc.wait(timeout=30)
    wait_until(lambda: not any(alive(pid) for pid in children), seconds=20)
    assert len(smtp_server.received) < 1500  # they stopped, not finished
    assert not TextOfEmail.objects.filter(status=Status.SENDING).exists()  # and gave back what they held
    assert TextOfEmail.objects.filter(status=Status.SENT).count() == len(smtp_server.received)


# --- --loop, progress ------------------------------------------------------------------------------


@db
@pytest.mark.slow
def test_the_loop_forks_each_round_that_has_enough_mail(smtp_server):
    first = queue_emails(1000)
    proc = cron(
        subprocess_env(smtp_server), "--loop", "--interval", "0.3", "--processes", "2", "--batch-size", "50", "-v", "2"
    )
    try:
        wait_until(lambda: len(smtp_server.received) >= 1000)
        second = queue_emails(1000, start=1000)
        wait_until(lambda: len(smtp_server.received) >= 2000)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    received = Counter(m.message_id for m in smtp_server.received)
    assert set(received) == first | second and max(received.values()) == 1
    assert out.count("sent 1000, deferred 0, dropped 0") == 2, out
    # Two a round when both children find mail (one, under load, may find its sibling took the rest).
    assert 3 <= smtp_server.connections <= 4, smtp_server.connections


@db
@pytest.mark.slow
def test_the_progress_line_counts_the_childrens_outcomes(smtp_server):
    from dbmail.ops.cron import Runner
    from dbmail.ops.progress import Progress

    queue_emails(1000)
    stream = io.StringIO()
    progress = Progress(stream)
    result = Runner(batch_size=50, progress=progress, processes=2).run_once()
    assert result.sent.sent == 1000 and smtp_server.connections == 2
    assert progress.counts[Status.SENT] == 1000 and progress.total == 1000
    assert "sent 1,000/1,000" in progress.line()


@db
def test_the_fork_decision_counts_due_mail_only_as_far_as_it_needs():
    from dbmail.send import claims

    queue_emails(30)
    assert claims.due_count() == 30
    assert claims.due_count(at_most=12) == 12 and claims.due_count(at_most=100) == 30


# --- the setting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "two", "2.5", "", 0])
def test_a_bad_process_count_fails_the_check_naming_it(settings, value):
    settings.DBMAIL_SEND_PROCESSES = value
    assert app_errors() == [
        (
            "dbmail.E001",
            f"Setting DBMAIL_SEND_PROCESSES={value!r} must be auto (one per core) or a whole number of at least 1.",
        )
    ]


@pytest.mark.parametrize("value", ["auto", "1", "4", 4])
def test_good_process_counts_pass_the_check(settings, value):
    settings.DBMAIL_SEND_PROCESSES = value  # a Python settings file may write the number as a number
    assert app_errors() == []
    assert send_processes(value) == (send_processes("auto") if value == "auto" else int(value))


def test_a_bad_process_count_in_the_environment_stops_start_up_naming_it():
    done = run_manage("check", DBMAIL_SEND_PROCESSES="many")
    assert done.returncode == 2
    assert done.stderr.startswith("mailsite: Setting DBMAIL_SEND_PROCESSES='many' must be auto")


@db
def test_processes_below_one_is_refused():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="--processes must be at least 1"):
        call_command("dbmail_cron", "--processes", "0", stdout=io.StringIO())


@db
@pytest.mark.slow
def test_the_processes_of_one_run_share_a_groups_budget(smtp_server):
    import json

    from dbmail.models import PacingBucket

    groups = {"gmail": {"rate_per_minute": 60, "max_connections": 0}}
    PacingBucket.objects.create(name="gmail", tokens=0, configured_per_minute=60)  # what 60 a minute earns
    account = SenderAccountFactory()
    queue_emails(100, account=account, domain="gmail.com")
    queue_emails(1200, account=account, domain="example.net")
    env = subprocess_env(smtp_server, DBMAIL_DESTINATION_GROUPS=json.dumps(groups))
    started = time.time()
    proc = cron(env, "--processes", "3", "--batch-size", "50", "--max-seconds", "5", "-v", "2")
    out, err = proc.communicate(timeout=120)
    elapsed = time.time() - started
    assert proc.returncode == 0, err
    received = Counter(m.rcpt_tos[0].rpartition("@")[2] for m in smtp_server.received)
    # Each child opens its connection when it first has mail to send: under load one may find none left.
    assert received["example.net"] == 1200 and 1 <= smtp_server.connections <= 3
    # One budget for the three: one a second while they ran (three times that if each counted its own).
    assert 1 <= received["gmail.com"] <= elapsed + 2, (received, elapsed)
    assert TextOfEmail.objects.filter(status=Status.QUEUED, attempts=0).count() == 100 - received["gmail.com"]
    assert not TextOfEmail.objects.filter(status=Status.SENDING).exists()
