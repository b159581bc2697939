import json
import sys

from django.core.management.base import BaseCommand
from django.db import DatabaseError
from django.utils import timezone

from dbmail.ops import health
from dbmail.ops.purge import duration_argument


class Command(BaseCommand):
    help = (
        "Health of every moving part (sender, expansion, tracking, log follower, DKIM signing, IMAP poller, gate), the "
        "outbox's counts, emails possibly delivered twice and each account's current sending problem. "
        "Exits 0 ok, 1 warning, 2 critical, 3 unknown (the monitoring-plugin convention)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--stuck-after",
            type=duration_argument,
            default=None,
            help="Mail or a request due longer than this is critical (e.g. 30m, 2h; default DBMAIL_STUCK_AFTER_SECONDS).",
        )
        parser.add_argument("--json", action="store_true", help="One JSON object, for monitoring systems.")

    def handle(self, *args, **opts):
        try:
            report = health.run(stuck_after=opts["stuck_after"])
        except DatabaseError as exc:
            self._unreachable(exc, opts["json"])
            sys.exit(health.EXIT_CODES[health.CRITICAL])
        if opts["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self._print(report)
        if report.code:
            sys.exit(report.code)

    def _print(self, report):
        # The first line is what a monitoring plugin shows: the state and what is wrong.
        problems = "; ".join(f"{f.check}: {f.summary}" for f in report.problems)
        self.stdout.write(f"MAILSITE {report.state.upper()}" + (f": {problems}" if problems else ""))
        for finding in report.findings:
            self.stdout.write(f"  {finding.check:<13} {finding.state:<9} {finding.summary}")
        self.stdout.write("emails:")
        for status, n in sorted(report.counts.items()):
            self.stdout.write(f"{status:<11} {n:>9}")
        if not report.counts:
            self.stdout.write("the outbox is empty")
        if report.requests:
            self.stdout.write("requests: " + ", ".join(f"{s} {n}" for s, n in sorted(report.requests.items())))
        age = f"due for {health.human(report.oldest_due_age)}" if report.oldest_due_age else "none due"
        self.stdout.write(f"oldest due: {age}")
        last = report.last_success
        when = f" ({timezone.localtime(last):%Y-%m-%d %H:%M %Z})" if last else ""  # --json has the ISO time
        self.stdout.write(f"last successful dbmail_cron: {health.ago(last)}{when}")
        if report.possibly_delivered:
            self.stdout.write(
                f"outcome unknown (possibly delivered): {report.possibly_delivered} emails went out whole but "
                "their answer was lost, or their sender was killed before recording it; they were sent again "
                "and may have arrived twice"
            )
        for problem in report.sending_problems:
            self.stdout.write(f"sending problem: {health.describe_problem(problem)}")

    def _unreachable(self, exc, as_json):
        words = f"cannot reach the database: {exc}".strip()
        if as_json:
            self.stdout.write(json.dumps({"state": health.CRITICAL, "code": 2, "error": words}))
        else:
            self.stdout.write(f"MAILSITE CRITICAL: {words}")
