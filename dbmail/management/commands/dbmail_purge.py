from django.core.management.base import BaseCommand

from dbmail.ops.purge import duration_argument, purge, purge_api_sends, purge_pending_uploads, purge_tracking


class Command(BaseCommand):
    help = (
        "Delete finished (sent, dropped, cancelled, tracked) emails and their log, request totals kept, "
        "old tracking bookkeeping, the sending API's old idempotency keys, "
        "and files kept from failed compose saves over a day ago."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=duration_argument, required=True, help="Age such as 7d, 12h, 30m.")

    def handle(self, *args, **opts):
        removed = purge(opts["older_than"])
        tracking = purge_tracking(opts["older_than"])
        keys = purge_api_sends(opts["older_than"])
        uploads = purge_pending_uploads()
        if opts["verbosity"] >= 1:
            self.stdout.write(
                f"dbmail_purge: removed {removed} emails, {tracking} tracking records and {keys} API idempotency keys "
                f"older than {opts['older_than']}, and {uploads} kept upload(s) older than a day"
            )
