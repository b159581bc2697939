"""The sender's database work, done beside the SMTP conversation rather than in its way.

On PostgreSQL a sender has one database thread with its own connection. It
claims the next batch while the current one is being sent, and commits the
outcomes within some 20 ms of the server's answers, while the SMTP thread
already talks about the next messages: those that arrive within 20 ms of the
first (up to half the window, or those waiting when the database is slower
than the SMTP server) go out together in one statement. The SMTP thread never has more than DBMAIL_OUTCOME_WINDOW
outcomes waiting for their commit, so a killed sender can cause at most that
many messages, plus the one just answered, to be sent twice (crash_window(): the
claim that takes its rows over marks that many possibly delivered, dbmail.send.takeover).

Where a second connection cannot help (SQLite, or inside a caller's open
transaction, whose rows another connection cannot see) the same calls run
inline.

When the database connection breaks, the outcomes that could not be
committed are kept in `unwritten` (with the one handed over after the
break), so the sender can write them once the database answers again
(dbmail.send.recovery).
"""

import collections
import queue
import sys
import threading
import time
from concurrent.futures import Future

from django.db import connection

from dbmail.conf import settings as conf
from dbmail.send import outcomes, retry


class InlineWorker:
    """Does each piece of database work at once, on the caller's connection."""

    def call(self, func, *args, **kwargs):
        future = Future()
        future.set_result(func(*args, **kwargs))
        return future

    unwritten = ()

    def record(self, email, token, outcome):
        return outcomes.record(email, token, outcome)

    def close(self, raise_error=True):
        pass


class ThreadedWorker:
    """Runs claims and outcome writes, in order, on a thread with its own connection."""

    # A thread waiting for a socket must get the interpreter back quickly when its
    # answer arrives; the default 5 ms hand-over would stall the SMTP conversation.
    SWITCH_INTERVAL = 0.0002

    # Outcomes are committed in groups: a statement costs PostgreSQL about 0.4 ms whatever it writes,
    # and each outcome in it about 60 µs more. So the thread waits up to GATHER_SECONDS after an
    # outcome for others to join it (never for more than half the window, and never while a claim
    # or another call is waiting): the crash bound above stays what the window makes it.
    # 20 ms lets half the window fill at the rate one of two processes sends on two cores (about
    # 800 a second); with 5 ms a statement carried about 12 outcomes, and cost both sides more
    # per email (docs/scaling.md, "What keeps a sender fast").
    GATHER_SECONDS = 0.02

    def __init__(self, window=None):
        self._work = queue.Queue()  # calls, and None to end
        # Outcomes go on a deque of their own, not through the queue: an append takes no lock, and the
        # database thread is woken only when it is idle or half the window is waiting, not once an outcome
        # (each wake-up is a hand-over of the interpreter between the two threads).
        self._rows = collections.deque()
        self._wake = threading.Event()
        self._idle = False  # the database thread waits for anything at all (not gathering)
        self._window = window or conf.DBMAIL_OUTCOME_WINDOW
        self._gather_rows = max(1, self._window // 2)
        # Each counter is written by one thread only: handed over (the sender's), written or failed (ours).
        self._handed = 0
        self._settled = 0
        self._room = threading.Condition()
        self._ended = False
        self.error = None
        self.unwritten = []  # outcomes.Row not committed because the database failed
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.SWITCH_INTERVAL)
        self._thread = threading.Thread(target=self._run, name="dbmail-db", daemon=True)
        self._thread.start()

    def call(self, func, *args, **kwargs):
        """Run `func` on the database thread after the work queued before it; returns a Future."""
        future = Future()
        self._work.put((future, func, args, kwargs))
        self._wake.set()
        return future

    def _full(self):
        return self._handed - self._settled >= self._window and not self._ended

    def record(self, email, token, outcome):
        """Queue the outcome's commit; returns the outcome as it will be applied."""
        if self._full():  # no more than the window waits for its commit
            with self._room:
                self._room.wait_for(lambda: not self._full())
        row = outcomes.as_row(email, token, outcome)
        if self.error or self._ended:
            self.unwritten.append(row)  # the message was sent all the same: its outcome must not be lost
            raise self.error or RuntimeError("the database thread has ended")
        self._rows.append(row)
        self._handed += 1
        if self._ended:  # the thread ended between the test above and the append: the row is not left behind
            while self._rows:
                self.unwritten.append(self._rows.popleft())
            raise self.error or RuntimeError("the database thread has ended")
        if self._idle or len(self._rows) >= self._gather_rows:
            self._wake.set()
        return retry.give_up(outcome, email.attempts, email)

    def _gather(self):
        """Let outcomes join the first for up to GATHER_SECONDS, up to half the window, unless a call waits."""
        deadline = time.monotonic() + self.GATHER_SECONDS
        while len(self._rows) < self._gather_rows and self._work.empty():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)
            self._wake.clear()

    def _run(self):
        try:
            while True:
                self._idle = True
                if not self._rows and self._work.empty():
                    self._wake.wait()
                self._idle = False
                self._wake.clear()
                if self._rows and self._work.empty():
                    self._gather()
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    self._write_waiting()  # outcomes handed over before a call are committed before it runs
                    if item is None:
                        return
                    future, func, args, kwargs = item
                    try:
                        future.set_result(func(*args, **kwargs))
                    except BaseException as exc:
                        future.set_exception(exc)
                self._write_waiting()
        except BaseException as exc:  # a fault of this loop itself: the sender must stop, as for the database's
            self.error = self.error or exc
            raise
        finally:
            self._ended = True
            while self._rows:  # only if the loop itself failed: kept to be written later, never dropped
                self.unwritten.append(self._rows.popleft())
            with self._room:
                self._room.notify_all()
            try:
                connection.close()
            except Exception:  # a connection the server broke: the sender already knows (self.error)
                pass

    def _write_waiting(self):
        rows = []
        while self._rows:
            rows.append(self._rows.popleft())
        if not rows:
            return
        try:
            outcomes.write(rows)
        except Exception as exc:  # surfaces in the sender, which must stop: it cannot record
            self.error = self.error or exc
            self.unwritten.extend(rows)
        finally:
            self._settled += len(rows)
            with self._room:
                self._room.notify_all()

    def close(self, raise_error=True):
        self._work.put(None)
        self._wake.set()
        self._thread.join()
        sys.setswitchinterval(self._switch_interval)
        if self.error and raise_error:
            raise self.error


def crash_window():
    """The most messages a sender killed at any moment may have sent with no outcome committed.

    The window of outcomes waiting for their commit (ThreadedWorker.record waits for room
    beyond it), and the one whose answer came while the window was full. The next message's
    envelope may be on its way too (pipelining), but not its content: it cannot have gone out.
    Inline, each outcome is committed before the next message: one. dbmail.send.takeover marks
    this many of a dead claim's rows possibly delivered.
    """
    return conf.DBMAIL_OUTCOME_WINDOW + 1


def worker():
    """The fastest safe worker here: another connection cannot see rows of a transaction still open."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return ThreadedWorker()
    return InlineWorker()
