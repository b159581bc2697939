"""One dbmail_cron run: expand due requests, then send due emails, then record the run."""

import time
from dataclasses import dataclass

from django.db import DatabaseError
from django.utils import timezone

from dbmail.exceptions import QueueTableError, Unreachable
from dbmail.intake import expand, smailer, spool
from dbmail.ops import health
from dbmail.ops.runloop import Round, RunLoop
from dbmail.send import loop as sending


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
    """Runs once or in a loop (dbmail.ops.runloop); SIGTERM/SIGINT stop it after the message in flight."""

    def __init__(
        self, max_seconds=None, max_messages=None, batch_size=None, on_outcome=None, on_chunk=None, interval=60.0
    ):
        self.options = dict(max_seconds=max_seconds, max_messages=max_messages, batch_size=batch_size)
        self.on_outcome = on_outcome
        self.on_chunk = on_chunk
        self.loop = RunLoop(interval, on_stop=[self._stop_sending])
        self.sender = None

    @property
    def stopping(self):
        return self.loop.stopping

    def stop(self, *args):
        self.loop.stop()

    def _stop_sending(self):
        if self.sender:
            self.sender.stopping = True

    def install_signal_handlers(self):
        self.loop.handle_signals()

    def run_once(self):
        started, clock = timezone.now(), time.monotonic()
        try:
            expanded, sent = smailer.cycle(self._expand_and_send).result
        except DatabaseError as exc:
            raise Unreachable(f"cannot reach the database: {exc}".strip()) from exc
        except (spool.SpoolError, QueueTableError) as exc:
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

    def _expand_and_send(self):
        expanded = expand.expand_due(on_chunk=self.on_chunk) if not self.stopping else expand.ExpandResult()
        self.sender = sending.Sender(on_outcome=self.on_outcome, **self.options)
        self.sender.stopping = self.stopping
        return expanded, self.sender.run()

    def run_loop(self, report):
        """Run every `interval` seconds until stopped; `report(result or exception)` after each.

        After a run that could not reach the database or the SMTP server the
        pause doubles, up to dbmail.ops.runloop.MAX_BACKOFF, until a run succeeds.
        """

        def one_round():
            try:
                report(self.run_once())
            except Unreachable as exc:
                report(exc)
                return Round.FAILED
            return Round.DONE

        self.loop.run(one_round)
