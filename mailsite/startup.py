"""Start-up for manage.py and wsgi.py: a setting that cannot be used ends the process with its message.

The settings module stops start-up with ImproperlyConfigured naming the
setting; a traceback around that message only hides it, so it is printed as
`mailsite: <message>` on stderr and the process exits 2. `--traceback` on a
manage.py command line shows the traceback as well.
"""

import os
import sys

from django.core.exceptions import ImproperlyConfigured

EX_CONFIG = 2


def configuration_failed(exc):
    sys.stderr.write(f"mailsite: {exc}\n")
    raise SystemExit(EX_CONFIG)


def manage(argv):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(argv)
    except ImproperlyConfigured as exc:
        if "--traceback" in argv:
            raise
        configuration_failed(exc)


def wsgi_application():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
    from django.core.wsgi import get_wsgi_application

    try:
        return get_wsgi_application()
    except ImproperlyConfigured as exc:
        configuration_failed(exc)
