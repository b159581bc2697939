import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from dbmail.ops import health
from dbmail.ops.runloop import Round, RunLoop, restores_signals
from dbmail.track import logfollow
from dbmail.track.consume import consume
from dbmail.track.queue import QueueUnavailable


class Command(BaseCommand):
    help = (
        "Apply delivery tracking events from the tracking queue to email statuses, in batches "
        "(or, with --follow-log, turn an MTA log into tracking events)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, help="Events per transaction (TRACKING_BATCH_SIZE).")
        parser.add_argument("--loop", action="store_true", help="Keep running (for hosts without cron).")
        parser.add_argument("--interval", type=float, default=10, help="Seconds between runs with --loop.")
        parser.add_argument(
            "--follow-log", metavar="PATH", help="Follow this Postfix or Exim log (runs until stopped)."
        )
        parser.add_argument("--format", choices=sorted(logfollow.PARSERS), help="The log's format, with --follow-log.")
        parser.add_argument("--poll", type=float, default=1.0, help="Seconds between looks at the log.")

    @restores_signals  # its stop handlers end with it (call_command in a worker, a test)
    def handle(self, *args, **opts):
        self.loop = RunLoop(opts["poll"] if opts["follow_log"] else opts["interval"]).handle_signals()
        self.loud = opts["verbosity"] >= 2 or (sys.stdout.isatty() and opts["verbosity"] >= 1)
        if opts["follow_log"]:
            if not opts["format"]:
                raise CommandError("--follow-log needs --format postfix or --format exim")
            self.follow(opts)
            return
        if not opts["loop"]:
            try:
                self.run_once(opts["batch_size"])
            except (QueueUnavailable, DatabaseError) as exc:
                raise CommandError(f"dbmail_track: {exc}") from exc
            return

        def one_round():
            try:
                self.run_once(opts["batch_size"])
            except (QueueUnavailable, DatabaseError) as exc:
                self.stderr.write(f"dbmail_track: {exc}")
                return Round.FAILED
            return Round.DONE

        self.loop.run(one_round)

    def run_once(self, batch_size):
        started = timezone.now()
        try:
            run = consume(batch_size=batch_size, should_stop=lambda: self.loop.stopping)
        except (QueueUnavailable, DatabaseError) as exc:
            health.beat("dbmail_track", started, error=str(exc)[:2000])
            raise
        health.beat("dbmail_track", started, {"batches": run.batches, **vars(run.totals)})
        if self.loud:
            self.stdout.write(f"dbmail_track: {run.summary()}")

    def follow(self, opts):
        follower = logfollow.Follower(opts["follow_log"], opts["format"])
        if self.loud:
            self.stdout.write(f"dbmail_track: following {opts['follow_log']} ({opts['format']})")
        beat = FollowerBeat(follower.path)

        def one_round():
            try:
                published = follower.poll()
            except (QueueUnavailable, DatabaseError) as exc:
                # Nothing was marked as read: the same lines are tried again.
                self.stderr.write(f"dbmail_track: {exc}")
                beat.failed(str(exc))
                return Round.FAILED
            beat.alive(published, follower.offset)
            if published and self.loud:
                self.stdout.write(f"dbmail_track: published {published} event(s) from the log")
            return Round.BUSY if published else Round.DONE

        self.loop.run(one_round)


class FollowerBeat:
    """The log follower's heartbeat for dbmail_status: written once a minute, and at once when it starts or stops failing."""

    EVERY = 60.0

    def __init__(self, path):
        self.path = path
        self.started = timezone.now()
        self.next_at = 0.0
        self.published = 0
        self.failing = None  # unknown until the first write

    def alive(self, published, offset):
        self.published += published
        self._maybe_write({"path": self.path, "published": self.published, "offset": offset}, "")

    def failed(self, error):
        self._maybe_write({"path": self.path, "published": self.published}, error[:2000])

    def _maybe_write(self, summary, error):
        if bool(error) == self.failing and time.monotonic() < self.next_at:
            return
        try:
            health.beat(health.FOLLOWER, self.started, summary, error)
        except DatabaseError:
            return  # the database is what failed; the next poll tries again
        self.failing = bool(error)
        self.next_at = time.monotonic() + self.EVERY
