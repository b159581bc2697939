from django.core.management.base import BaseCommand, CommandError

from dbmail.purge import parse_duration
from mailgate.purge import purge


class Command(BaseCommand):
    help = "Delete inbound messages older than --older-than, except held, raw and failed ones."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", required=True, help="Age such as 30d, 12h.")

    def handle(self, *args, **opts):
        try:
            age = parse_duration(opts["older_than"])
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from exc
        removed = purge(age)
        if opts["verbosity"] >= 1:
            self.stdout.write(f"mailgate_purge: removed {removed} inbound messages older than {opts['older_than']}")
