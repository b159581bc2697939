"""dbmail_cron's terminal line: total, rate and ETA, redrawn in place, nothing under cron."""

import io
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from dbmail import states
from dbmail.ops.progress import Progress, duration
from dbmail.send.retry import Outcome

from .conftest import ROOT, subprocess_env
from .factories import TextOfEmailFactory


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def sent():
    return Outcome(states.EmailStatus.SENT, 250, "ok")


def test_the_line_shows_sent_of_total_the_rate_and_the_time_left():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, clock=clock)
    progress.expanded(2000)
    assert progress.line() == "expanded 2,000 emails"
    progress.sending(5000)
    for _ in range(363):
        progress.outcome(None, sent())
    clock.now += 3.95  # 363 in 3.95 s: 92 a second, 4,637 to go
    assert progress.line() == "sent 363/5,000 (92/s, ETA 50s)"
    progress.outcome(None, Outcome(states.EmailStatus.DEFERRED, 451, "later"))
    assert progress.line().endswith(", deferred 1")


def test_redraws_in_place_at_most_five_times_a_second_and_clears_itself():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(stream, clock=clock)
    progress.sending(10)
    for _ in range(5):
        progress.outcome(None, sent())  # no time passes: not redrawn
    assert stream.getvalue().count("\r") == 1
    clock.now += 0.25
    progress.outcome(None, sent())
    assert stream.getvalue().count("\r") == 2 and "sent 6/10" in stream.getvalue()
    progress.clear()
    assert stream.getvalue().endswith("\r")
    assert progress.drawn_at is None


def test_an_idle_round_draws_nothing():
    stream = io.StringIO()
    progress = Progress(stream)
    progress.sending(0)
    progress.clear()
    assert stream.getvalue() == ""


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (49.6, "50s"), (200, "3m 20s"), (7500, "2h 05m"), (-3, "0s")])
def test_durations_are_short(seconds, text):
    assert duration(seconds) == text


def run_cron_on_a_terminal(env, *args):
    """dbmail_cron with its stderr on a pseudo-terminal; returns (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dbmail_cron", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode()
    return proc.wait(timeout=30), out, screen.decode()


@pytest.mark.django_db(transaction=True)
def test_on_a_terminal_cron_shows_total_rate_and_eta(smtp_server):
    TextOfEmailFactory.create_batch(12)
    # 20 a second: the 12 take 0.6 s, long enough for a few redraws.
    env = subprocess_env(smtp_server, DBMAIL_THROTTLE_PER_SECOND=20)
    code, out, screen = run_cron_on_a_terminal(env)
    assert code == 0, screen
    assert "sent 0/12" in screen
    drawn = [part for part in screen.split("\r") if "/12 (" in part]
    assert drawn, screen  # e.g. "sent 5/12 (20/s, ETA 0s)"
    assert "/s, ETA " in drawn[-1]
    assert "sent 12, deferred 0, dropped 0" in out
    assert len(smtp_server.received) == 12


@pytest.mark.django_db(transaction=True)
def test_under_cron_it_prints_nothing(smtp_server):
    TextOfEmailFactory.create_batch(3)
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "dbmail_cron"],
        env=subprocess_env(smtp_server),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert (done.stdout, done.stderr) == (b"", b"")
    assert len(smtp_server.received) == 3
