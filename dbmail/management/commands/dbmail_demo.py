from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from dbmail.ops import demo


class Command(BaseCommand):
    help = "Load demo users, groups, a sender account and a first request (DEBUG only)."

    def handle(self, *args, **opts):
        if not settings.DEBUG:
            raise CommandError("dbmail_demo creates a superuser with a known password; it runs only with DEBUG on.")
        for line in demo.load():
            self.stdout.write(f"created {line}")
