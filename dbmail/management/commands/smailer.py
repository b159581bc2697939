from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from dbmail.exceptions import QueueTableError
from dbmail.intake import smailer, spool
from dbmail.ops import sites


class Command(BaseCommand):
    help = (
        "The outbox per sender account (seed 003): `queue [SENDER]` lists waiting mail (the outbox's, "
        "the queue table's and the spool's), `send [SENDER]` takes the table and the spool in and sends "
        "it now whatever the retry schedule. SENDER '@' or none means every sender."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["queue", "send"])
        parser.add_argument("sender", nargs="?", default=smailer.ALL, help="A sender account's address, or @.")
        parser.add_argument(
            "--sid", default=None, help="The site: a database alias (DATABASE_URL_<SID>); default: DATABASE_URL."
        )

    def handle(self, *args, **opts):
        try:
            sites.use(opts["sid"])
            if opts["action"] == "queue":
                for line in smailer.lines(opts["sender"]):
                    self.stdout.write(line)
            else:
                self.send(opts["sender"], opts["verbosity"])
        except (sites.UnknownSite, smailer.UnknownSender, spool.SpoolError, QueueTableError) as exc:
            raise CommandError(str(exc)) from exc
        except DatabaseError as exc:
            raise CommandError(f"cannot reach the database: {exc}") from exc

    def send(self, sender, verbosity):
        def show_intake(rows, taken):
            if verbosity >= 1 and rows.rows:
                self.stdout.write(f"table: took in {rows.rows} row(s), {rows.emails} email(s)")
            if verbosity >= 1 and taken.files:
                self.stdout.write(f"spool: took in {taken.files} file(s), {taken.emails} email(s)")
            for error in taken.errors:
                self.stderr.write(f"spool: cannot read {error}")

        def report(email, outcome):
            if verbosity >= 1:
                code = f" {outcome.code}" if outcome.code else ""
                self.stdout.write(f"{smailer.line(email)} {outcome.status}{code}: {outcome.text}")

        done = smailer.cycle(lambda: smailer.send(sender, on_outcome=report), on_intake=show_intake)
        result, settled, written = done.result, done.spool_settled, done.table_written
        if verbosity >= 1:
            self.stdout.write(f"sent {result.sent}, deferred {result.deferred}, dropped {result.dropped}")
            if settled.sent or settled.deferred or settled.dropped:
                self.stdout.write(
                    f"spool: {settled.sent} file(s) to sent/, {settled.deferred} to defer/, {settled.dropped} to drop/"
                )
            if written.sent or written.deferred or written.dropped:
                self.stdout.write(f"table: {written.sent} row(s) S, {written.deferred} d, {written.dropped} D")
        for row_id in written.gone:
            self.stderr.write(f"table: row {row_id} is gone; its outcome was not written")
        if result.server_unreachable:
            raise CommandError("cannot reach the SMTP server: " + (result.errors[0] if result.errors else ""))
