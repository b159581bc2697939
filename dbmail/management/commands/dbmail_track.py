import signal
import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from dbmail.ops import health
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

    def handle(self, *args, **opts):
        self.stopping = False
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.loud = opts["verbosity"] >= 2 or (sys.stdout.isatty() and opts["verbosity"] >= 1)
        if opts["follow_log"]:
            if not opts["format"]:
                raise CommandError("--follow-log needs --format postfix or --format exim")
            self.follow(opts)
            return
        while True:
            try:
                self.run_once(opts["batch_size"])
            except (QueueUnavailable, DatabaseError) as exc:
                if not opts["loop"]:
                    raise CommandError(f"dbmail_track: {exc}") from exc
                self.stderr.write(f"dbmail_track: {exc}")
            if not opts["loop"] or self.stopping:
                return
            self.sleep(opts["interval"])
            close_old_connections()

    def run_once(self, batch_size):
        started = timezone.now()
        try:
            run = consume(batch_size=batch_size, should_stop=lambda: self.stopping)
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
        while not self.stopping:
            try:
                published = follower.poll()
            except (QueueUnavailable, DatabaseError) as exc:
                # Nothing was marked as read: the same lines are tried again.
                self.stderr.write(f"dbmail_track: {exc}")
                close_old_connections()
                published = 0
            if published and self.loud:
                self.stdout.write(f"dbmail_track: published {published} event(s) from the log")
            if not published:
                self.sleep(opts["poll"])

    def sleep(self, seconds):
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, seconds))

    def stop(self, *args):
        self.stopping = True
