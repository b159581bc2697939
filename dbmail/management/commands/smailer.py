from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from dbmail.intake import smailer, spool
from dbmail.ops import sites


class Command(BaseCommand):
    help = (
        "The outbox per sender account (seed 003): `queue [SENDER]` lists waiting mail, "
        "`send [SENDER]` sends it now whatever the retry schedule. SENDER '@' or none means every sender."
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
                for email in smailer.waiting(opts["sender"]).iterator(chunk_size=2000):
                    self.stdout.write(smailer.line(email))
            else:
                self.send(opts["sender"], opts["verbosity"])
        except (sites.UnknownSite, smailer.UnknownSender, spool.SpoolError) as exc:
            raise CommandError(str(exc)) from exc
        except DatabaseError as exc:
            raise CommandError(f"cannot reach the database: {exc}") from exc

    def send(self, sender, verbosity):
        def show_intake(taken):
            if verbosity >= 1 and taken.files:
                self.stdout.write(f"spool: took in {taken.files} file(s), {taken.emails} email(s)")
            for error in taken.errors:
                self.stderr.write(f"spool: cannot read {error}")

        def report(email, outcome):
            if verbosity >= 1:
                code = f" {outcome.code}" if outcome.code else ""
                self.stdout.write(f"{smailer.line(email)} {outcome.status}{code}: {outcome.text}")

        _, result, settled = spool.cycle(lambda: smailer.send(sender, on_outcome=report), on_intake=show_intake)
        if verbosity >= 1:
            self.stdout.write(f"sent {result.sent}, deferred {result.deferred}, dropped {result.dropped}")
            if settled.sent or settled.deferred or settled.dropped:
                self.stdout.write(
                    f"spool: {settled.sent} file(s) to sent/, {settled.deferred} to defer/, {settled.dropped} to drop/"
                )
        if result.server_unreachable:
            raise CommandError("cannot reach the SMTP server: " + (result.errors[0] if result.errors else ""))
