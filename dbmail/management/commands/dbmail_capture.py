import time

from django.conf import settings
from django.core.management.base import BaseCommand

from dbmail.ops.capture import serve


class Command(BaseCommand):
    help = "Run a local SMTP server that saves every message to a directory (demo and development only)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=1025)
        parser.add_argument("--dir", default=str(settings.VAR_DIR / "mail"))

    def handle(self, *args, **opts):
        controller = serve(opts["dir"], port=opts["port"])
        self.stdout.write(f"capturing mail on 127.0.0.1:{opts['port']} into {opts['dir']}/")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            controller.stop()
