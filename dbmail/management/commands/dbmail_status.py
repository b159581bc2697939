import json
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from dbmail.conf import settings as conf
from dbmail.ops import health
from dbmail.ops.purge import duration_argument


class Command(BaseCommand):
    help = "Show the outbox: emails per status, the oldest due email, the last run. Exit 2 when mail is stuck."

    def add_arguments(self, parser):
        parser.add_argument(
            "--stuck-after",
            type=duration_argument,
            default=None,
            help="Stuck when due longer than this (e.g. 30m, 2h; default DBMAIL_STUCK_AFTER_SECONDS).",
        )
        parser.add_argument("--json", action="store_true", help="One JSON object (times in ISO 8601) for monitoring.")

    def handle(self, *args, **opts):
        stuck_after = opts["stuck_after"] or timedelta(seconds=conf.DBMAIL_STUCK_AFTER_SECONDS)
        try:
            report = health.check(stuck_after)
        except DatabaseError as exc:
            raise CommandError(f"cannot reach the database: {exc}") from exc
        if opts["json"]:
            self.stdout.write(json.dumps(as_json(report)))
        else:
            self.print_text(report)
        if report.stuck:
            raise CommandError("STUCK: " + "; ".join(report.reasons), returncode=2)

    def print_text(self, report):
        for status, n in sorted(report.counts.items()):
            self.stdout.write(f"{status:<11} {n:>9}")
        if not report.counts:
            self.stdout.write("the outbox is empty")
        age = f"due for {health.humane(report.oldest_due_age)}" if report.oldest_due_age else "none due"
        self.stdout.write(f"oldest due: {age}")
        last = report.last_success
        when = f" ({timezone.localtime(last):%Y-%m-%d %H:%M %Z})" if last else ""
        self.stdout.write(f"last successful dbmail_cron: {health.ago(last)}{when}")


def as_json(report):
    return {
        "counts": report.counts,
        "oldest_due_seconds": round(report.oldest_due_age.total_seconds(), 3) if report.oldest_due_age else None,
        "last_success": report.last_success.isoformat() if report.last_success else None,
        "stuck": report.stuck,
        "reasons": report.reasons,
    }
