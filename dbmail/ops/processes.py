"""One dbmail_cron run sending with several processes, so that it uses the machine's cores.

One sender process spends most of its time in Python (building messages,
reading SMTP answers), which one core runs at a time whatever its threads
do. With enough due mail, the run (which has expanded the requests itself)
forks DBMAIL_SEND_PROCESSES children that each run an ordinary Sender, and
waits for them: they share the work exactly as separate dbmail_cron
processes do (claims with FOR UPDATE SKIP LOCKED under leases, pacing,
connection slots, caps and the throttle's budget all in the database, each
child with its own pacer and slots), so nothing is sent twice and a child
killed with kill -9 loses nothing (its rows come back after their lease).

- Forked only when it pays: at least cron.MIN_BATCHES_PER_PROCESS batches due
  for each child; an empty or small queue is sent in-process, as before.
- No connection crosses the fork: the parent closes every database
  connection first, and each child opens its own (a connection shared by
  two processes would mix their statements on one socket).
- Each child writes its SendResult to the parent through a pipe (and, for
  the terminal's progress line, its counts every PROGRESS_SECONDS); the
  parent adds them into one SendResult, so the run reports one summary.
- --max-messages is split between the children; --max-seconds is the same
  deadline for all (time.monotonic() is the machine's clock, not the process's).
- A stop (SIGTERM, SIGINT) is passed on to every child: each finishes the
  message in hand and gives back what it claimed; the parent waits for them.
  A child whose parent died (its parent pid changes) stops the same way.

It uses only modules Django has imported already (os, pickle, select,
signal, struct, threading), through dbmail.ops.forks for the pipe, and is
itself imported only by a run with mail due.
"""

import logging
import os
import select
import signal
import sys
import threading
import traceback
from collections import Counter

from dbmail import states
from dbmail.exceptions import DatabaseLost, SendingProcessFailed
from dbmail.ops import forks
from dbmail.send.loop import SendResult
from dbmail.send.recovery import DATABASE_ERRORS, Leftovers

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 0.2  # how often a child tells the parent's progress line its counts
WATCH_SECONDS = 0.2  # how often a child looks whether its parent is still there
MAX_ERRORS = 20  # recipients' errors kept for the report, as one Sender keeps
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def shares(max_messages, n):
    """--max-messages split between n children (None: no limit for any)."""
    if max_messages is None:
        return [None] * n
    return [max_messages // n + (1 if i < max_messages % n else 0) for i in range(n)]


class _Child:
    def __init__(self, pid, fd):
        self.pid = pid
        self.fd = fd
        self.frames = forks.Reader()
        self.counts = {}
        self.report = None  # ("result", SendResult) / ("lost", (text, Leftovers)) / ("crashed", text)
        self.status = None  # os.waitpid's


class Children:
    """The sending children of one run: fork them, pass a stop on, collect their results."""

    def __init__(self, make_sender, n, max_messages=None, on_counts=None):
        self.make_sender = make_sender  # (max_messages, on_outcome) -> a Sender, called in the child
        self.n = n
        self.max_messages = max_messages
        self.on_counts = on_counts  # called in the parent with the children's counts added up
        self.children = []
        self.stopping = False

    def start(self):
        forks.prepare()
        parent = os.getpid()
        for share in shares(self.max_messages, self.n):
            read, write = forks.pipe()
            # A stop signal waits until the child has its own handlers (the parent's would stop its siblings).
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                pid = forks.fork(keep=(write,))  # in the child, its siblings' pipes closed
                if pid == 0:  # the child: never returns
                    try:
                        _child_main(self.make_sender, share, write, parent, report_counts=self.on_counts is not None)
                    finally:
                        os._exit(1)
            except OSError as exc:  # no more processes (EAGAIN, ENOMEM): go on with those forked, if any
                forks.close(read)
                forks.close(write)
                if not self.children:
                    raise
                log.warning("dbmail_cron: cannot start more than %s sending processes: %s", len(self.children), exc)
                break
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            forks.close(write)
            self.children.append(_Child(pid, read))
            if self.stopping:  # a stop came before this child existed
                self.stop()
        return self

    def stop(self):
        """Ask every child to stop after the message in hand (SIGTERM and SIGINT come here)."""
        self.stopping = True
        for child in self.children:
            if child.status is None:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def wait(self):
        """Wait for every child; their SendResults added up, or the error that ends the run."""
        open_fds = {child.fd: child for child in self.children}
        try:
            while open_fds:
                ready, _, _ = select.select(list(open_fds), [], [], 1.0)
                for fd in ready:
                    child = open_fds[fd]
                    data = os.read(fd, 1 << 16)
                    if not data:
                        forks.close(open_fds.pop(fd).fd)
                        continue
                    self._take(child, child.frames.feed(data))
        except BaseException:  # our own failure: the children still stop cleanly, and are not left behind
            self.stop()
            for fd in open_fds:
                forks.close(fd)
            raise
        finally:
            for child in self.children:
                _, child.status = forks.waitpid(child.pid)
        return self._result()

    def _take(self, child, received):
        for kind, payload in received:
            if kind == "counts":
                child.counts = payload
                if self.on_counts:
                    self.on_counts(sum((Counter(c.counts) for c in self.children), Counter()))
            else:
                child.report = (kind, payload)

    def _result(self):
        total, failures, lost, leftovers = SendResult(), [], [], Leftovers()
        for child in self.children:
            kind, payload = child.report or (None, None)
            if kind == "result":
                _add(total, payload)
            elif kind == "lost":
                lost.append(payload[0])
                if payload[1] is not None:
                    leftovers.add(payload[1])
            elif kind == "crashed":
                failures.append(f"sending process {child.pid} failed: {payload}")
            else:
                failures.append(f"sending process {child.pid} {forks.died(child.status)}")
        if lost:
            # As one sender's lost connection: the run hands back what the children could not, when it can.
            raise DatabaseLost(lost[0], leftovers)
        if failures:
            raise SendingProcessFailed(
                "; ".join(failures) + f"; the other processes sent {total.sent}, deferred {total.deferred}, "
                f"dropped {total.dropped}; what a failed process held is sent by a later run once its lease "
                "runs out (DBMAIL_LEASE_SECONDS)"
            )
        return total


def _add(total, result):
    for name in (*states.OUTCOMES, "possibly_delivered", "connections", "connect_failures"):
        setattr(total, name, getattr(total, name) + getattr(result, name))
    total.errors.extend(result.errors[: max(0, MAX_ERRORS - len(total.errors))])
    # Each child reports the server or account that failed it: the same words from two children once.
    total.problems.extend(p for p in result.problems if p not in total.problems)


def _child_main(make_sender, share, fd, parent, report_counts):
    """A child's whole life: send, write the outcome to the parent, exit (no cleanup of the parent's)."""
    code = 0
    sender = None
    stopped = False
    done = threading.Event()
    counts = dict.fromkeys(states.OUTCOMES, 0)  # every key from the start: the watcher copies it as it grows

    def stop(*args):
        nonlocal stopped
        stopped = True
        if sender is not None:
            sender.stopping = True

    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

        def on_outcome(email, outcome):
            counts[outcome.status] += 1

        sender = make_sender(share, on_outcome if report_counts else None)
        if stopped or os.getppid() != parent:
            sender.stopping = True
        watcher = threading.Thread(
            target=_watch, args=(sender, parent, done, fd, counts if report_counts else None), daemon=True
        )
        watcher.start()
        try:
            report = ("result", sender.run())
        finally:
            done.set()
            watcher.join()
    except DatabaseLost as exc:
        report = ("lost", (str(exc), _give_back(exc.leftovers)))
    except DATABASE_ERRORS as exc:
        report = ("lost", (" ".join(str(exc).split()) or type(exc).__name__, None))
    except BaseException as exc:  # a bug: said in full on stderr, in one line to the parent
        traceback.print_exc()
        report, code = ("crashed", f"{type(exc).__name__}: {exc}"), 1
    try:
        try:
            data = forks.frame(*report)
        except Exception:  # leftovers that cannot be pickled: their leases give them back
            data = (
                forks.frame(report[0], (report[1][0], None))
                if report[0] == "lost"
                else forks.frame("crashed", "no result")
            )
        if report_counts:  # the last counts, which the watcher may not have sent yet
            data = forks.frame("counts", dict(counts)) + data
        forks.write_all(fd, data)
    except OSError:
        pass  # the parent is gone: nobody to tell, and what we held was given back or is under its lease
    finally:
        try:
            from django.db import connections

            connections.close_all()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _give_back(leftovers):
    """What a child held when the database went away: given back now, else to the parent (None: too big)."""
    if leftovers:
        try:
            leftovers.give_back()
        except DATABASE_ERRORS:
            return leftovers
    return None


def _watch(sender, parent, done, fd, counts):
    """In the child, beside the sender: stop it when the parent dies; tell the parent the counts."""
    last = None
    while not done.wait(min(WATCH_SECONDS, PROGRESS_SECONDS)):
        if os.getppid() != parent:
            sender.stopping = True
            log.warning("dbmail_cron: the parent process died; stopping after the message in hand")
            return
        if counts is not None and counts != last:
            last = dict(counts)
            try:
                forks.write_all(fd, forks.frame("counts", last))
            except OSError:
                sender.stopping = True
                return
