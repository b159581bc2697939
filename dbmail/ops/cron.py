"""One dbmail_cron run: expand due requests, send due emails, fold the day's counts, record the run.

--max-seconds counts from the start of the run, expansion included. A lost
database connection ends a run with one line and a non-zero exit; what the
sender held is given back as soon as the database answers again (at once
when it does, else at the start of the next round of --loop, whose pause
grows after each failed round: dbmail.ops.runloop).
"""

import logging
import os
import time
from dataclasses import dataclass

from django.utils import timezone

from dbmail import rollup
from dbmail.conf import settings as conf
from dbmail.exceptions import DatabaseLost, DatabaseUnreachable, QueueTableError, SendingProcessFailed, Unreachable
from dbmail.intake import expand, smailer, spool
from dbmail.ops import health
from dbmail.ops.runloop import Round, RunLoop
from dbmail.send import claims
from dbmail.send import loop as sending
from dbmail.send.recovery import DATABASE_ERRORS, Leftovers

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    expanded: expand.ExpandResult
    sent: sending.SendResult
    seconds: float

    def summary(self):
        e, s = self.expanded, self.sent
        failed = f", {len(e.failed)} failed" if e.failed else ""
        unknown = f" ({s.possibly_delivered} with outcome unknown, possibly delivered)" if s.possibly_delivered else ""
        return (
            f"expanded {e.requests} request{'s' * (e.requests != 1)} ({e.emails} emails{failed}); "
            f"sent {s.sent}, deferred {s.deferred}{unknown}, dropped {s.dropped} in {self.seconds:.1f}s"
        )

    def as_dict(self):
        return {
            "requests": self.expanded.requests,
            "expanded": self.expanded.emails,
            "failed_requests": len(self.expanded.failed),
            "sent": self.sent.sent,
            "deferred": self.sent.deferred,
            "dropped": self.sent.dropped,
            "possibly_delivered": self.sent.possibly_delivered,
            "problems": self.sent.problems,
            "seconds": round(self.seconds, 3),
        }


class Runner:
    """Runs once or in a loop (dbmail.ops.runloop); SIGTERM/SIGINT stop it after the message in flight."""

    def __init__(
        self, max_seconds=None, max_messages=None, batch_size=None, progress=None, interval=60.0, processes=None
    ):
        self.max_seconds = max_seconds
        self.options = dict(max_messages=max_messages, batch_size=batch_size)
        self.progress = progress  # a dbmail.ops.progress.Progress on a terminal, else None
        self.processes = processes  # sending processes at most (None: DBMAIL_SEND_PROCESSES)
        self.loop = RunLoop(interval, on_stop=[self._stop_sending])
        self.sender = None
        self.children = None  # dbmail.ops.processes.Children while a run sends with several processes
        self.leftovers = Leftovers()  # what a run cut off from the database still holds

    @property
    def stopping(self):
        return self.loop.stopping

    def stop(self, *args):
        self.loop.stop()

    def _stop_sending(self):
        if self.sender:
            self.sender.stopping = True
        if self.children:
            self.children.stop()

    def install_signal_handlers(self):
        self.loop.handle_signals()

    def give_back(self):
        """Hand back what a run cut off from the database held; False while the database is still away."""
        if not self.leftovers:
            return True
        count = len(self.leftovers)
        try:
            self.leftovers.give_back()
        except DATABASE_ERRORS as exc:
            log.info("cannot give back %s claimed emails yet: %s", count, exc)
            return False
        log.info("gave back %s emails claimed before the database connection broke", count)
        return True

    def run_once(self):
        started, clock = timezone.now(), time.monotonic()
        deadline = clock + self.max_seconds if self.max_seconds else None
        if not self.give_back():
            raise DatabaseUnreachable("cannot reach the database to give back the emails a run held")
        try:
            expanded, sent = smailer.cycle(lambda: self._expand_and_send(deadline)).result
            rollup.merge_all()  # the dashboard's counts: the deltas of the batches sent, folded into one row per day
        except DatabaseLost as exc:
            self.leftovers.add(exc.leftovers)
            held = len(self.leftovers)
            given = self.give_back()
            fate = (
                f"the {held} emails it held were given back"
                if given
                else f"the {held} emails it held go back when the database answers (at the latest after "
                "their lease, DBMAIL_LEASE_SECONDS)"
            )
            raise DatabaseUnreachable(f"lost the database connection while sending ({exc}); {fate}") from exc
        except DATABASE_ERRORS as exc:
            raise DatabaseUnreachable(f"cannot reach the database: {' '.join(str(exc).split())}".strip()) from exc
        except (spool.SpoolError, QueueTableError) as exc:
            raise Unreachable(str(exc)) from exc
        result = RunResult(expanded, sent, time.monotonic() - clock)
        error = ""
        if sent.server_unreachable:
            error = "cannot reach the SMTP server: " + (sent.problems[0] if sent.problems else "")
        try:
            health.beat("dbmail_cron", started, result.as_dict(), error)
        except DATABASE_ERRORS:
            pass  # the run's own outcome stands; the heartbeat is only a report
        if error:
            raise Unreachable(error)
        return result

    def _expand_and_send(self, deadline):
        progress = self.progress
        if progress:
            progress.start_round()
        on_chunk = progress.expanded if progress else None
        expanded = (
            expand.expand_due(on_chunk=on_chunk, deadline=deadline) if not self.stopping else expand.ExpandResult()
        )
        processes = self._processes()
        batch_size = self.options["batch_size"] or conf.DBMAIL_BATCH_SIZE
        due = None
        if progress or processes > 1:  # one count query, for the person watching or to judge a fork
            # To judge a fork, counted only as far as enough for every process (a paced backlog can be millions).
            due = claims.due_count(at_most=None if progress else processes * batch_size * MIN_BATCHES_PER_PROCESS)
            limit = self.options["max_messages"]
            due = due if limit is None else min(due, limit)
        if progress:
            progress.sending(due)
        if processes > 1 and due and not self.stopping:
            from dbmail.ops import processes as forking

            n = how_many(processes, due, batch_size)
            if n > 1 and not _in_transaction():
                sent = self._send_forked(forking, n, deadline)
                if sent is not None:
                    return expanded, sent
        on_outcome = progress.outcome if progress else None
        self.sender = sending.Sender(on_outcome=on_outcome, deadline=deadline, **self.options)
        self.sender.stopping = self.stopping
        return expanded, self.sender.run()

    def _processes(self):
        """Sending processes at most: --processes, else DBMAIL_SEND_PROCESSES ("auto": the cores we may use)."""
        if self.processes is not None:
            return self.processes
        return send_processes(conf.DBMAIL_SEND_PROCESSES)

    def _send_forked(self, forking, n, deadline):
        """Send with n child processes, each an ordinary Sender (dbmail.ops.processes)."""
        batch_size = self.options["batch_size"]

        def make_sender(max_messages, on_outcome):  # called in each child
            return sending.Sender(
                on_outcome=on_outcome, deadline=deadline, max_messages=max_messages, batch_size=batch_size
            )

        progress = self.progress
        self.children = forking.Children(
            make_sender, n, self.options["max_messages"], on_counts=progress.counted if progress else None
        )
        try:
            self.children.stopping = self.stopping
            try:
                self.children.start()
            except OSError as exc:  # not one process could be forked: this one sends, as with one process
                log.warning("dbmail_cron: cannot fork sending processes (%s); sending in this one", exc)
                return None
            return self.children.wait()
        finally:
            self.children = None

    def run_loop(self, report):
        """Run every `interval` seconds until stopped; `report(result or exception)` after each.

        After a run that could not reach the database or the SMTP server the
        pause doubles, up to dbmail.ops.runloop.MAX_BACKOFF, until a run succeeds;
        emails held when the database went away are given back by the first
        round that reaches it.
        """

        def one_round():
            try:
                report(self.run_once())
            except (Unreachable, SendingProcessFailed) as exc:
                if isinstance(exc, DatabaseUnreachable):
                    _forget_connection()
                report(exc)
                return Round.FAILED
            except Exception as exc:  # a bug must not end the loop: the next round may well succeed
                log.exception("dbmail_cron: the run failed")
                report(exc)
                return Round.FAILED
            return Round.DONE

        self.loop.run(one_round)
        self.give_back()


# A child must have at least this many batches to send, or the fork and its connections cost more than they save.
MIN_BATCHES_PER_PROCESS = 4


def how_many(processes, due, batch_size):
    """How many sending processes to fork for `due` emails (1: send in-process)."""
    return max(1, min(processes, due // (batch_size * MIN_BATCHES_PER_PROCESS)))


def send_processes(setting):
    """DBMAIL_SEND_PROCESSES as a number: "auto" is the cores this process may run on (a container's, taskset's)."""
    if setting != "auto":
        return int(setting)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _in_transaction():
    """A caller's open transaction (a test's): its rows are invisible to children, so no fork."""
    from django.db import connections

    return any(c.in_atomic_block for c in connections.all(initialized_only=True))


def _forget_connection():
    """Drop a connection the server broke, so the next round opens a new one."""
    from django.db import connection

    try:
        connection.close()
    except DATABASE_ERRORS:
        pass
