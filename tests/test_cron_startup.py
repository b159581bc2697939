"""dbmail_cron starts with only what a run needs: it is started every minute on every host.

The REST API (Django REST framework, drf-spectacular), AMQP (pika), bounce
parsing (flufl.bounce), the IMAP client and the site's URL patterns are
imported only by the commands and requests that use them. A tiny wrapper runs
manage.py in a child and writes the names in sys.modules at exit.
"""

import json
import subprocess
import sys

import pytest

from .conftest import ROOT, manage, subprocess_env

WRAPPER = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.path.insert(0, sys.argv[1].rpartition("/")[0])
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

NOT_NEEDED = (
    "rest_framework.views",
    "rest_framework.serializers",
    "rest_framework.generics",
    "drf_spectacular.openapi",
    "pika",
    "flufl",
    "imapclient",
    "mailsite.urls",
    "mailgate.mailboxes.api",
    "mailgate.mailboxes.imap",
    "mailgate.gate.forward",
    "dbmail.panel.views",
    "dbmail.ops.dnscheck",  # the admin's DNS page and dbmail_dkim
    "defusedxml",  # the spool's XML parser: imported when a spool file is read
    "dkim",  # dkimpy (and dnspython under it): imported when the first message is signed
    # The admin's pages (mailsite/adminconfig.py): imported by the URL patterns and the admin's check.
    "dbmail.admin",
    "mailgate.admin",
    "django.contrib.auth.admin",
)


def imported_by(tmp_path, *argv):
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(out), str(ROOT / "manage.py"), *argv],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text()))


def loaded(modules, name):
    return name in modules or any(m.startswith(name + ".") for m in modules)


@pytest.mark.django_db(transaction=True)
def test_dbmail_cron_on_an_empty_queue_imports_no_api_amqp_bounce_imap_or_url_code(tmp_path):
    modules = imported_by(tmp_path, "dbmail_cron", "-v", "2")
    assert "dbmail.send.loop" in modules and "dbmail.intake.expand" in modules  # the run itself did happen
    assert [name for name in NOT_NEEDED if loaded(modules, name)] == []


@pytest.mark.django_db(transaction=True)
def test_the_wrapper_sees_what_a_command_that_needs_the_url_patterns_imports(tmp_path):
    # `manage.py check` checks the URL patterns, so it loads them and the REST API behind them.
    modules = imported_by(tmp_path, "check")
    assert loaded(modules, "mailsite.urls") and loaded(modules, "rest_framework.views")


# Not importing the admin's pages at start-up must not hide a broken one from `manage.py check`: the admin's
# check imports them itself, whether or not the URL patterns (which import them too) are checked, and in
# whatever order the checks run.
@pytest.mark.parametrize("argv", [["check"], ["check", "--deploy"], ["check", "--tag", "admin"]], ids=" ".join)
def test_manage_py_check_still_reports_a_broken_modeladmin(argv):
    done = manage(*argv, env=subprocess_env(DJANGO_SETTINGS_MODULE="tests.brokenadmin.settings"))
    assert done.returncode != 0
    assert "admin.E108" in done.stderr and "BrokenGroupAdmin" in done.stderr, done.stderr


def test_the_admin_pages_are_all_registered_once_the_url_patterns_load():
    from django.contrib import admin
    from django.urls import reverse

    reverse("admin:index")  # loads the URL patterns, as any request does
    registered = {model._meta.label for model in admin.site._registry}
    assert {"dbmail.TextOfEmail", "dbmail.MessageRequest", "mailgate.EmailList", "auth.User"} <= registered


def test_manage_py_keeps_the_garbage_collector_out_of_start_up_and_on_for_the_command():
    # mailsite/startup.py: collection off while Django is set up, what set-up built frozen, collection on again.
    done = manage("shell", "-c", "import gc; print(gc.isenabled(), gc.get_freeze_count())")
    assert done.returncode == 0, done.stderr
    enabled, frozen = done.stdout.split()[-2:]
    assert enabled == "True" and int(frozen) > 50_000  # about 80,000
