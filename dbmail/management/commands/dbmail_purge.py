from django.core.management.base import BaseCommand, CommandError

from dbmail.purge import parse_duration, purge


class Command(BaseCommand):
    help = "Delete finished (sent, dropped, cancelled, tracked) emails and their log; request totals are kept."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="Age such as 7d, 12h, 30m.")

    def handle(self, *args, **opts):
        try:
            age = parse_duration(opts["older_than"])
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from exc
        removed = purge(age)
        if opts["verbosity"] >= 1:
            self.stdout.write(f"dbmail_purge: removed {removed} emails older than {opts['older_than']}")
