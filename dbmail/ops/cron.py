"""One dbmail_cron run: expand due requests, then send due emails, then record the run."""

import signal
import time
from dataclasses import dataclass

from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from dbmail.intake import expand, spool
from dbmail.ops import health
from dbmail.send import claims
from dbmail.send import loop as sending


class Unreachable(Exception):
    """The database or the SMTP server could not be reached at all."""


@dataclass
class RunResult:
    expanded: expand.ExpandResult
    sent: sending.SendResult
    seconds: float

    def summary(self):
        e, s = self.expanded, self.sent
        return (
            f"expanded {e.requests} request{'s' * (e.requests != 1)} ({e.emails} emails); "
            f"sent {s.sent}, deferred {s.deferred}, dropped {s.dropped} in {self.seconds:.1f}s"
        )

    def as_dict(self):
        return {
            "requests": self.expanded.requests,
            "expanded": self.expanded.emails,
            "sent": self.sent.sent,
            "deferred": self.sent.deferred,
            "dropped": self.sent.dropped,
            "seconds": round(self.seconds, 3),
        }


class Runner:
    """Runs once or in a loop; SIGTERM/SIGINT stop it after the message in flight."""

    def __init__(self, max_seconds=None, max_messages=None, batch_size=None, progress=None):
        self.options = dict(max_seconds=max_seconds, max_messages=max_messages, batch_size=batch_size)
        self.progress = progress  # a dbmail.ops.progress.Progress on a terminal, else None
        self.stopping = False
        self.sender = None

    def stop(self, *args):
        self.stopping = True
        if self.sender:
            self.sender.stopping = True

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run_once(self):
        started, clock = timezone.now(), time.monotonic()
        try:
            progress = self.progress
            if progress:
                progress.start_round()
            spool.intake()  # both spool steps do nothing unless DBMAIL_SPOOL_DIR is set
            on_chunk = progress.expanded if progress else None
            expanded = expand.expand_due(on_chunk=on_chunk) if not self.stopping else expand.ExpandResult()
            if progress:  # one count query, only for the person watching
                due = claims.due_count()
                limit = self.options["max_messages"]
                progress.sending(due if limit is None else min(due, limit))
            self.sender = sending.Sender(on_outcome=progress.outcome if progress else None, **self.options)
            self.sender.stopping = self.stopping
            sent = self.sender.run()
            spool.settle()
        except DatabaseError as exc:
            raise Unreachable(f"cannot reach the database: {exc}".strip()) from exc
        except spool.SpoolError as exc:
            raise Unreachable(str(exc)) from exc
        result = RunResult(expanded, sent, time.monotonic() - clock)
        error = ""
        if sent.server_unreachable:
            error = "cannot reach the SMTP server: " + (sent.errors[0] if sent.errors else "")
        try:
            health.beat("dbmail_cron", started, result.as_dict(), error)
        except DatabaseError:
            pass  # the run's own outcome stands; the heartbeat is only a report
        if error:
            raise Unreachable(error)
        return result

    def run_loop(self, interval, report):
        """Run every `interval` seconds until stopped; `report(result or exception)` after each."""
        while not self.stopping:
            close_old_connections()
            try:
                report(self.run_once())
            except Unreachable as exc:
                report(exc)
            deadline = time.monotonic() + interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.2, interval))
