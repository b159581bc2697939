import io
import os
import sys

from django.core.management.base import BaseCommand

from mailgate.gate import receive as gate


class Command(BaseCommand):
    help = (
        "Read one message from stdin (as an MTA pipe transport delivers it) and route it. "
        "Exits 0 accepted, 65 too big, 67 no such list, 75 temporary failure, "
        "77 refused by the posting policy (only with MAILGATE_REFUSE_AT_SMTP)."
    )
    requires_system_checks = []  # checks could touch the database; a down database must still give 75

    def add_arguments(self, parser):
        parser.add_argument("--recipient", help="Envelope recipient (default: $RECIPIENT or $LOCAL_PART@$DOMAIN).")
        parser.add_argument("--sender", help="Envelope sender (default: $SENDER; empty = the null sender).")

    def handle(self, *args, recipient=None, sender=None, verbosity=1, **options):
        stdout = self.stdout if verbosity > 0 else io.StringIO()  # -v 0: only failures are printed
        code = gate.main(sys.stdin.buffer, stdout, self.stderr, os.environ, recipient=recipient, sender=sender)
        sys.exit(code)
