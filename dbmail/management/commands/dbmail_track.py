import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from dbmail.ops import health
from dbmail.ops.runloop import Round, RunLoop
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

        def one_round():
            try:
                published = follower.poll()
            except (QueueUnavailable, DatabaseError) as exc:
                # Nothing was marked as read: the same lines are tried again.
                self.stderr.write(f"dbmail_track: {exc}")
                return Round.FAILED
            if published and self.loud:
                self.stdout.write(f"dbmail_track: published {published} event(s) from the log")
            return Round.BUSY if published else Round.DONE

        self.loop.run(one_round)
