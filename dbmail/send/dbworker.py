"""The sender's database work, done beside the SMTP conversation rather than in its way.

On PostgreSQL a sender has one database thread with its own connection. It
claims the next batch while the current one is being sent, and commits each
outcome as soon as the server has answered, while the SMTP thread already
talks about the next message. When the database is slower than the SMTP
server, the outcomes waiting at that moment go out together in one
statement. The SMTP thread never has more than DBMAIL_OUTCOME_WINDOW
outcomes waiting for their commit, so a killed sender can cause at most that
many messages, plus the one just answered, to be sent twice.

Where a second connection cannot help (SQLite, or inside a caller's open
transaction, whose rows another connection cannot see) the same calls run
inline.

When the database connection breaks, the outcomes that could not be
committed are kept in `unwritten` (with the one handed over after the
break), so the sender can write them once the database answers again
(dbmail.send.recovery).
"""

import queue
import sys
import threading
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

    def __init__(self, window=None):
        self._work = queue.Queue()
        self._slots = threading.Semaphore(window or conf.DBMAIL_OUTCOME_WINDOW)
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
        return future

    def record(self, email, token, outcome):
        """Queue the outcome's commit; returns the outcome as it will be applied."""
        self._slots.acquire()  # no more than the window waits for its commit
        row = outcomes.as_row(email, token, outcome)
        if self.error:
            self._slots.release()
            self.unwritten.append(row)  # the message was sent all the same: its outcome must not be lost
            raise self.error
        self._work.put(row)
        return retry.give_up(outcome, email.attempts, email)

    def _run(self):
        try:
            while True:
                items = [self._work.get()]
                while not self._work.empty():
                    items.append(self._work.get_nowait())
                rows = []
                for item in items:
                    if isinstance(item, outcomes.Row):
                        rows.append(item)
                        continue
                    self._write(rows)  # outcomes queued before a call are committed before it runs
                    rows = []
                    if item is None:
                        return
                    future, func, args, kwargs = item
                    try:
                        future.set_result(func(*args, **kwargs))
                    except BaseException as exc:
                        future.set_exception(exc)
                self._write(rows)
        finally:
            try:
                connection.close()
            except Exception:  # a connection the server broke: the sender already knows (self.error)
                pass

    def _write(self, rows):
        if not rows:
            return
        try:
            outcomes.write(rows)
        except Exception as exc:  # surfaces in the sender, which must stop: it cannot record
            self.error = self.error or exc
            self.unwritten.extend(rows)
        finally:
            for _ in rows:
                self._slots.release()

    def close(self, raise_error=True):
        self._work.put(None)
        self._thread.join()
        sys.setswitchinterval(self._switch_interval)
        if self.error and raise_error:
            raise self.error


def worker():
    """The fastest safe worker here: another connection cannot see rows of a transaction still open."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return ThreadedWorker()
    return InlineWorker()
