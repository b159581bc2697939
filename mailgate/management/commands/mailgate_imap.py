from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from dbmail.ops.runloop import Round, RunLoop, restores_signals
from mailgate.mailboxes import imap, outgoing
from mailgate.models import MailAccount


class Command(BaseCommand):
    help = (
        "Poll the enabled IMAP folders whose after_read_timeout has passed, and send the mailbox messages "
        "waiting in status `sending` through their accounts' SMTP servers. Once, or --loop."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep running until SIGTERM/SIGINT.")
        parser.add_argument("--interval", type=float, default=5.0, help="Seconds between rounds with --loop.")
        parser.add_argument("--discover", action="store_true", help="List every account's folders first.")

    @restores_signals  # its stop handlers end with it (call_command in a worker, a test)
    def handle(self, *args, loop=False, interval=5.0, discover=False, verbosity=1, **options):
        self.verbosity = verbosity
        if discover:
            for account in MailAccount.objects.filter(enabled=True).select_related("profile"):
                try:
                    added = imap.discover(account)
                    self._say(f"{account}: {len(added)} new folder(s) {', '.join(added)}".rstrip())
                except imap.MailboxError as exc:
                    self.stderr.write(str(exc))
        if not loop:
            try:
                failed = self._round()
            except DatabaseError as exc:
                raise CommandError(f"mailgate_imap: cannot reach the database: {exc}") from exc
            if failed:
                raise CommandError(f"mailgate_imap: {failed} folder(s) failed")
            return

        def one_round():
            try:
                self._round()
            except DatabaseError as exc:
                # Only this slows the loop down: one account's failing server must not delay the others.
                self.stderr.write(f"mailgate_imap: cannot reach the database: {exc}")
                return Round.FAILED
            return Round.DONE

        RunLoop(interval).handle_signals().run(one_round)

    def _round(self):
        """One poll and send round; how many folders failed."""
        polled = imap.poll_due()
        sent = outgoing.send_pending()
        for folder in polled.folders:
            if folder.error:
                self.stderr.write(f"{folder.folder}: {folder.error}")
            elif folder.stored or folder.deleted or self.verbosity > 1:
                resync = " (UIDVALIDITY changed: re-synced)" if folder.resynced else ""
                self._say(f"{folder.folder}: {folder.stored} stored, {folder.deleted} deleted on the server{resync}")
        if sent and self.verbosity > 1:
            self._say(f"{sent} outgoing message(s) handled")
        return len(polled.errors)

    def _say(self, text):
        if self.verbosity > 0:
            self.stdout.write(text)
