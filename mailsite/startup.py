"""Start-up for manage.py and wsgi.py: a setting that cannot be used ends the process with its message.

The settings module stops start-up with ImproperlyConfigured naming the
setting; a traceback around that message only hides it, so it is printed as
`mailsite: <message>` on stderr and the process exits 2. `--traceback` on a
manage.py command line shows the traceback as well.

manage.py also keeps Python's cyclic garbage collector out of start-up and
exit (docs/scaling.md, "Start-up"). Setting Django up builds some 80,000
objects the collector tracks (modules, classes, models, registries) and frees
next to none of them, yet the collector walks them over and over while they
are made, and again when the interpreter shuts down: about a quarter of a
short command's run (dbmail_cron on an empty queue, every minute on
every host). So collection is off until Django is set up, what set-up built
is then frozen (gc.freeze: kept out of every later collection, as it lives as
long as the process anyway) and collection is back on for the command itself;
at exit, what is left is frozen too. Memory is not affected: nothing freed by
reference counting waits for the collector, and the process's memory goes
back to the system when it exits.
"""

import atexit
import gc
import os
import sys

from django.core.exceptions import ImproperlyConfigured

EX_CONFIG = 2


def configuration_failed(exc):
    sys.stderr.write(f"mailsite: {exc}\n")
    raise SystemExit(EX_CONFIG)


def manage(argv):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
    from django.core.management import ManagementUtility

    class Utility(ManagementUtility):
        def fetch_command(self, subcommand):
            _set_up()  # ManagementUtility.execute has run django.setup(); the command is still to be loaded
            return super().fetch_command(subcommand)

    gc.disable()
    atexit.register(_exiting)  # before Django's own handlers: it runs after them (atexit is last in, first out)
    try:
        Utility(argv).execute()
    except ImproperlyConfigured as exc:
        if "--traceback" in argv:
            raise
        configuration_failed(exc)
    finally:
        gc.enable()  # a command that never loaded one (help, version)


def _set_up():
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _exiting():
    """Close the database connections (the collector would have, in passing), freeze what is left."""
    from django.apps import apps

    if apps.ready:
        from django.db import Error, connections

        try:
            connections.close_all()
        except Error:
            pass  # a connection the server already broke: nothing to close
    gc.freeze()


def wsgi_application():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
    from django.core.wsgi import get_wsgi_application

    try:
        return get_wsgi_application()
    except ImproperlyConfigured as exc:
        configuration_failed(exc)
