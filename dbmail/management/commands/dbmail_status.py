from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from dbmail.conf import settings as conf
from dbmail.ops import health
from dbmail.ops.purge import duration_argument


class Command(BaseCommand):
    help = (
        "Show the outbox: emails per status, the oldest due email, the last run, emails possibly delivered twice, "
        "and each account's current sending problem. Exit 2 when mail is stuck."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--stuck-after",
            type=duration_argument,
            default=None,
            help="Stuck when due longer than this (e.g. 30m, 2h; default DBMAIL_STUCK_AFTER_SECONDS).",
        )

    def handle(self, *args, **opts):
        stuck_after = opts["stuck_after"] or timedelta(seconds=conf.DBMAIL_STUCK_AFTER_SECONDS)
        try:
            report = health.check(stuck_after)
        except DatabaseError as exc:
            raise CommandError(f"cannot reach the database: {exc}") from exc
        for status, n in sorted(report.counts.items()):
            self.stdout.write(f"{status:<11} {n:>9}")
        if not report.counts:
            self.stdout.write("the outbox is empty")
        age = f"{int(report.oldest_due_age.total_seconds())}s" if report.oldest_due_age else "none due"
        self.stdout.write(f"oldest due: {age}")
        self.stdout.write(f"last successful dbmail_cron: {report.last_success or 'never'}")
        if report.possibly_delivered:
            self.stdout.write(
                f"outcome unknown (possibly delivered): {report.possibly_delivered} emails went out whole but "
                "their answer was lost; they were sent again and may have arrived twice"
            )
        for problem in report.problems:
            who = problem.account.address if problem.account_id else "the site's mail"
            self.stdout.write(
                f"sending problem: {who} via {problem.server}, since {problem.first_seen_at:%Y-%m-%d %H:%M:%S}, "
                f"last {problem.last_seen_at:%Y-%m-%d %H:%M:%S} ({problem.emails_deferred} deferred): {problem.text}"
            )
        if report.stuck:
            raise CommandError("STUCK: " + "; ".join(report.reasons), returncode=2)
