import sys

from django.core.management.base import BaseCommand, CommandError

from dbmail.ops import sites
from dbmail.ops.cron import Runner, SendingProcessFailed, Unreachable
from dbmail.ops.progress import Progress
from dbmail.ops.runloop import restores_signals


class Command(BaseCommand):
    help = "Expand due message requests, then send due emails. Safe to run on several hosts at once."
    # The apps' own setting checks only: the full set loads every URL pattern (and the REST API behind
    # them) to check it, which would double the start-up of a command run every minute on every host.
    # `manage.py check` still runs them all.
    requires_system_checks = ["dbmail", "mailgate"]

    def add_arguments(self, parser):
        parser.add_argument(
            "--max-seconds", type=float, help="Stop after this many seconds from the start (expansion included)."
        )
        parser.add_argument("--max-messages", type=int, help="Stop after this many send attempts.")
        parser.add_argument("--batch-size", type=int, help="Emails claimed at a time (DBMAIL_BATCH_SIZE).")
        parser.add_argument(
            "--processes",
            type=int,
            help="Send with up to this many processes when enough mail is due (DBMAIL_SEND_PROCESSES; 1: one).",
        )
        parser.add_argument("--loop", action="store_true", help="Keep running (for hosts without cron).")
        parser.add_argument("--interval", type=float, default=60, help="Seconds between runs with --loop.")
        parser.add_argument("--sid", help="The site: a database alias (DATABASE_URL_<SID>); default: DATABASE_URL.")

    @restores_signals  # its stop handlers end with it (call_command in a worker, a test)
    def handle(self, *args, **opts):
        try:
            sites.use(opts["sid"])
        except sites.UnknownSite as exc:
            raise CommandError(str(exc)) from exc
        if opts["processes"] is not None and opts["processes"] < 1:
            raise CommandError("--processes must be at least 1")
        tty = sys.stderr.isatty() and opts["verbosity"] >= 1
        self.progress = Progress(sys.stderr) if tty else None
        self.loud = tty or opts["verbosity"] >= 2
        runner = Runner(
            max_seconds=opts["max_seconds"],
            max_messages=opts["max_messages"],
            batch_size=opts["batch_size"],
            progress=self.progress,
            interval=opts["interval"],
            processes=opts["processes"],
        )
        runner.install_signal_handlers()
        self.looping = opts["loop"]
        if opts["loop"]:
            runner.run_loop(self.report)
            return
        try:
            result = runner.run_once()
        except (Unreachable, SendingProcessFailed) as exc:
            raise CommandError(str(exc)) from exc
        self.report(result)
        if result.expanded.failed:  # everything else was done; the failed requests wait for a fix and a retry
            raise CommandError(f"{len(result.expanded.failed)} request(s) failed (see dbmail_status)")

    def report(self, outcome):
        if self.progress:
            self.progress.clear()
        if isinstance(outcome, Exception):
            self.stderr.write(f"dbmail_cron: {outcome}")
            return
        # Under cron, stay silent unless something failed: cron mails whatever we print.
        # A loop reports only the rounds that did something.
        for line in outcome.expanded.failed:
            self.stderr.write(f"dbmail_cron: request {line}")
        failed = outcome.sent.deferred or outcome.sent.dropped or outcome.expanded.failed
        idle = not (outcome.expanded.requests or outcome.sent.attempted)
        if (self.loud and not (self.looping and idle)) or (failed and self.verbosity >= 1):
            self.stdout.write(f"dbmail_cron: {outcome.summary()}")
            if failed and self.verbosity >= 1:
                # A server's or sender's failure once, in words; then what was said about recipients.
                for line in outcome.sent.problems:
                    self.stdout.write(f"  sending problem: {line}")
                for line in outcome.sent.errors:
                    self.stdout.write(f"  {line}")

    def execute(self, *args, **options):
        self.verbosity = options.get("verbosity", 1)
        return super().execute(*args, **options)
