from django.core.management.base import BaseCommand

from dbmail.ops.purge import duration_argument
from mailgate.gate.retention import purge


class Command(BaseCommand):
    help = "Delete inbound messages older than --older-than, except held, raw and failed ones."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=duration_argument, required=True, help="Age such as 30d, 12h.")

    def handle(self, *args, **opts):
        removed = purge(opts["older_than"])
        if opts["verbosity"] >= 1:
            self.stdout.write(f"mailgate_purge: removed {removed} inbound messages older than {opts['older_than']}")
