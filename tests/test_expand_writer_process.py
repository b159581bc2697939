"""Expansion's chunks written by a forked process (dbmail.intake.writer_process): the same rows and
checkpoints as the writer threads, and nothing lost or doubled when either process dies."""

import os
import pickle
import signal
import threading
import time
import types

import pytest
from django.contrib.auth import get_user_model
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from dbmail.intake import expand, writer_process
from dbmail.models import MessageRequest, TextOfEmail
from dbmail.ops import forks

from .conftest import start_manage, subprocess_env, wait_until
from .factories import MessageRequestFactory

pytestmark = pytest.mark.django_db(transaction=True)
Status = TextOfEmail.Status


def users(n, prefix="p"):
    User = get_user_model()
    User.objects.bulk_create(User(username=f"{prefix}{i:05d}", email=f"{prefix}{i:05d}@example.org") for i in range(n))


ALONE = forks.alone


@pytest.fixture(autouse=True)
def forking_allowed(monkeypatch):
    """Fork as dbmail_cron does, though the test session may have idle threads of its own by now
    (the browser tests leave two); the kill -9 test of dbmail_cron forks in a process of its own, unpatched."""
    monkeypatch.setattr(forks, "alone", lambda: True)


@pytest.fixture
def writers(monkeypatch):
    """Every WriterProcess made, so that a test can reach its child."""
    made = []
    init = writer_process.WriterProcess.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(writer_process.WriterProcess, "__init__", recording)
    return made


def exited(pid):
    """The process is gone, or a zombie nobody has reaped yet (its parent died)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and "Z" in line for line in status)
    except FileNotFoundError:
        return True


def test_every_recipient_once_with_each_chunk_reported_and_the_child_reaped(writers, settings):
    settings.DBMAIL_EXPAND_WRITER = "process"
    users(2500)
    request = MessageRequestFactory(recipient_set="all_active", text_body="Hi {{ username }}")
    reported = []
    assert expand.expand(expand.claim_request(), chunk_size=700, on_chunk=reported.append) == 2500
    assert len(writers) == 1
    assert reported == [200, 700, 700, 700, 200]  # in order, the small first chunk included
    with pytest.raises(ChildProcessError):
        os.waitpid(writers[0].pid, os.WNOHANG)  # reaped by close()
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == 2500
    addresses = list(request.emails.values_list("to_address", flat=True))
    assert sorted(addresses) == [f"p{i:05d}@example.org" for i in range(2500)]
    assert request.emails.filter(status=Status.QUEUED).count() == 2500


def test_threads_when_asked(writers, settings):
    settings.DBMAIL_EXPAND_WRITER = "threads"
    users(300)
    MessageRequestFactory(recipient_set="all_active")
    assert expand.expand_due().emails == 300
    assert writers == []


def test_threads_while_another_thread_runs(writers, settings, monkeypatch):
    """A fork copies every lock as it is: one held by another thread would never be released in the child."""
    monkeypatch.setattr(forks, "alone", ALONE)
    settings.DBMAIL_EXPAND_WRITER = "process"
    users(300)
    MessageRequestFactory(recipient_set="all_active")
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()
    try:
        assert expand.expand_due().emails == 300
    finally:
        done.set()
        other.join()
    assert writers == []


def test_a_cancel_stops_the_child_after_the_chunk_in_hand(settings):
    settings.DBMAIL_EXPAND_WRITER = "process"
    users(3000)
    request = MessageRequestFactory(recipient_set="all_active")
    seen = []

    def cancel_after_first(n):
        seen.append(n)
        if len(seen) == 1:
            MessageRequest.objects.get(pk=request.pk).cancel()

    assert expand.expand(expand.claim_request(), chunk_size=100, on_chunk=cancel_after_first) == 0
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.CANCELLED
    # Reports come a chunk or two behind the commits: the child may have committed those before the
    # cancel, never after it (each chunk's transaction starts by updating the request it no longer holds).
    assert 1 <= len(seen) <= 4
    assert request.emails.count() == sum(seen) < 3000
    assert request.emails.exclude(status=Status.CANCELLED).count() == 0


def test_a_database_error_in_the_child_reaches_the_parent_as_one_and_the_request_waits_for_its_lease(
    monkeypatch, settings
):
    settings.DBMAIL_EXPAND_WRITER = "process"
    users(1500)
    request = MessageRequestFactory(recipient_set="all_active")
    real = expand._commit_aside
    calls = []

    def lost_on_third(update, emails):
        calls.append(1)  # in the child's memory: its own count
        if len(calls) == 3:
            raise OperationalError("server closed the connection unexpectedly")
        return real(update, emails)

    monkeypatch.setattr(expand, "_commit_aside", lost_on_third)  # copied into the child by the fork
    with pytest.raises(OperationalError, match="server closed the connection"):
        expand.expand(expand.claim_request(), chunk_size=500)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDING  # not failed: the database's fault
    assert request.emails.count() == 700  # 200 + 500, each with its checkpoint
    assert request.checkpoint["after"] is not None

    monkeypatch.setattr(expand, "_commit_aside", real)
    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=timezone.now())
    assert expand.expand_due().requests == 1
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.emails.count() == 1500


def test_a_bug_in_the_child_fails_the_request_with_its_reason(monkeypatch, settings):
    settings.DBMAIL_EXPAND_WRITER = "process"
    users(400)
    request = MessageRequestFactory(recipient_set="all_active")

    def broken(update, emails):
        raise ValueError("a bug in the writer")

    monkeypatch.setattr(expand, "_commit_aside", broken)
    result = expand.expand_due()
    assert result.failed == [f"#{request.pk}: expansion failed: ValueError: a bug in the writer"]
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.FAILED


def test_a_writer_killed_with_kill_9_leaves_the_request_to_its_lease_and_loses_nothing(writers, settings):
    settings.DBMAIL_EXPAND_WRITER = "process"
    users(4000)
    request = MessageRequestFactory(recipient_set="all_active")

    def kill_after_second(n):
        if request.emails.count() >= 300:  # 200 + 100 committed: kill the child between chunks or in one
            os.kill(writers[0].pid, signal.SIGKILL)

    with pytest.raises(InterfaceError, match="writing process"):
        expand.expand(expand.claim_request(), chunk_size=100, on_chunk=kill_after_second)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDING
    made = request.emails.count()
    assert 300 <= made < 4000

    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=timezone.now())
    assert expand.expand_due().emails == 4000
    assert request.emails.count() == 4000
    assert request.emails.values("to_address").distinct().count() == 4000


def test_a_cron_killed_with_kill_9_mid_expansion_leaves_no_writer_behind_and_the_next_run_finishes():
    users(30000, prefix="k")
    request = MessageRequestFactory(recipient_set="all_active")
    env = subprocess_env(DBMAIL_LEASE_SECONDS="2", DBMAIL_EXPAND_CHUNK="500", DBMAIL_EXPAND_WRITER="process")
    proc = start_manage("dbmail_cron", "--max-messages", "0", env=env)
    try:
        wait_until(lambda: request.emails.count() >= 1000, seconds=60)
        children = _children(proc.pid)
        assert children, "the writing process was not found"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The child sees the pipe close: it commits what it was given and exits, unasked.
        wait_until(lambda: all(exited(pid) for pid in children), seconds=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDING and request.emails.count() < 30000
    time.sleep(2.2)  # the lease
    assert expand.expand_due().emails == 30000
    assert request.emails.values("to_address").distinct().count() == 30000


def _children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found += [int(c) for c in children.read().split()]
    return found


# --- the pieces ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=False)
def test_frames_split_across_reads_and_several_in_one_read():
    data = b"".join(forks.frame("chunk", (i, b"x" * (i * 70_000))) for i in range(4)) + forks.frame("done")
    for step in (1, 3, 4096, 65536, len(data)):
        reader, got = forks.Reader(), []
        for start in range(0, len(data), step):
            got += reader.feed(data[start : start + step])
        assert [kind for kind, _ in got] == ["chunk"] * 4 + ["done"]
        assert [len(p[1]) for _, p in got[:4]] == [0, 70_000, 140_000, 210_000]


@pytest.mark.django_db(transaction=False)
def test_an_error_the_parent_cannot_unpickle_comes_back_in_words_and_of_its_kind():
    class Local(OperationalError):  # defined in a function: pickle cannot find it by name
        pass

    back = writer_process._picklable(Local("gone away"))
    assert type(back) is OperationalError and "Local: gone away" in str(back)
    pickle.dumps(back)

    class Odd(Exception):
        pass

    back = writer_process._picklable(Odd("strange"))
    assert type(back) is RuntimeError and str(back) == "Odd: strange"
    kept = ValueError("plain")
    assert writer_process._picklable(kept) is kept


def test_two_writing_processes_at_once_each_ends_when_its_own_pipe_closes():
    """A child forked second must not keep the first child's input open (it would never see its end)."""
    seen = {"a": [], "b": []}
    a = writer_process.WriterProcess(expand.InlineWriter, lambda position, emails: True, seen["a"].append)
    b = writer_process.WriterProcess(expand.InlineWriter, lambda position, emails: True, seen["b"].append)
    try:
        a.submit(1, types.SimpleNamespace(count=5))
        b.submit(1, types.SimpleNamespace(count=7))
        closing = threading.Thread(target=a.close, daemon=True)
        closing.start()
        closing.join(20)
        assert not closing.is_alive(), "the first child never saw the end of its chunks"
        b.close()
        assert seen == {"a": [5], "b": [7]}
    finally:
        for child in (a, b):
            if not exited(child.pid):
                os.kill(child.pid, signal.SIGKILL)
