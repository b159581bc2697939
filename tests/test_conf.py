"""The apps' settings tables (dbmail/conf.py, mailgate/conf.py): defaults, live reads, system checks, start-up."""

import subprocess
import sys

import pytest
from django.core import checks

from dbmail import conf as dbmail_conf
from dbmail.conf import settings as conf
from mailgate import conf as mailgate_conf
from mailgate.conf import settings as mailgate_settings

from .conftest import ROOT
from .test_settings import environment, run_manage

ALL = [*dbmail_conf.SETTINGS, *mailgate_conf.SETTINGS]


def app_errors():
    """What `manage.py check` reports for the two apps, as (id, message)."""
    return [(e.id, e.msg) for e in checks.run_checks(tags=["dbmail", "mailgate"])]


def test_every_default_is_usable_and_documented(settings):
    documented = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    for spec in ALL:
        delattr(settings, spec.name)
    for spec in ALL:
        table = mailgate_settings if spec.name.startswith("MAILGATE_") else conf
        assert spec.problem(getattr(table, spec.name)) == "", spec.name
        assert f"`{spec.name}`" in documented, f"{spec.name} is not documented"
    assert app_errors() == []


def test_an_absent_setting_reads_as_its_default(settings):
    del settings.DBMAIL_BATCH_SIZE, settings.MAILGATE_MAX_BYTES, settings.TRACKING_WEBHOOK_SECRETS
    assert conf.DBMAIL_BATCH_SIZE == 100
    assert mailgate_settings.MAILGATE_MAX_BYTES == 25 * 1024 * 1024
    secrets = conf.TRACKING_WEBHOOK_SECRETS
    secrets.append("changed by a caller")
    assert conf.TRACKING_WEBHOOK_SECRETS == []  # a fresh list each time, never a shared one


def test_a_derived_default_follows_the_settings_it_comes_from(settings):
    del settings.DBMAIL_MESSAGE_ID_DOMAIN, settings.DBMAIL_UNSUBSCRIBE_MAILTO
    settings.DEFAULT_FROM_EMAIL = "Club <club@club.example>"
    assert conf.DBMAIL_MESSAGE_ID_DOMAIN == ""  # each Message-ID takes its From domain
    assert conf.DBMAIL_UNSUBSCRIBE_MAILTO == "unsubscribe@club.example"
    settings.DBMAIL_MESSAGE_ID_DOMAIN = "mail.club.example"
    assert conf.DBMAIL_UNSUBSCRIBE_MAILTO == "unsubscribe@mail.club.example"


def test_each_read_sees_the_setting_as_it_is_now(settings):
    settings.DBMAIL_BATCH_SIZE = 7
    assert conf.DBMAIL_BATCH_SIZE == 7
    settings.DBMAIL_BATCH_SIZE = 8
    assert conf.DBMAIL_BATCH_SIZE == 8


def test_a_name_not_in_the_table_is_an_attribute_error():
    with pytest.raises(AttributeError, match="DBMAIL_NO_SUCH is not one of dbmail's settings"):
        _ = conf.DBMAIL_NO_SUCH
    assert "DBMAIL_BATCH_SIZE" in dir(conf) and "MAILGATE_MAX_BYTES" not in dir(conf)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("DBMAIL_BATCH_SIZE", 0, "Setting DBMAIL_BATCH_SIZE=0 must be at least 1."),
        ("DBMAIL_BATCH_SIZE", "100", "Setting DBMAIL_BATCH_SIZE='100' must be an int, not str."),
        ("DBMAIL_LEASE_SECONDS", True, "Setting DBMAIL_LEASE_SECONDS=True must be an int, not bool."),
        ("DBMAIL_THROTTLE_PER_SECOND", -1, "Setting DBMAIL_THROTTLE_PER_SECOND=-1 must be at least 0."),
        ("DBMAIL_ASYNC_COMMIT", "yes", "Setting DBMAIL_ASYNC_COMMIT='yes' must be a boolean, not str."),
        ("DBMAIL_UNSUBSCRIBE_MAILTO", "nobody", "Setting DBMAIL_UNSUBSCRIBE_MAILTO='nobody' is not an email address."),
        ("DBMAIL_VERP_DOMAIN", "localhost", "Setting DBMAIL_VERP_DOMAIN='localhost' is not a domain name."),
        ("DBMAIL_VERP_PREFIX", "a b", "Setting DBMAIL_VERP_PREFIX='a b' must be 1-20 letters, digits, . _ -."),
        ("TRACKING_QUEUE_URL", "redis://u:pw@h/", "Setting TRACKING_QUEUE_URL must be an amqp:// or amqps:// URL"),
        ("TRACKING_WEBHOOK_SECRETS", ["short"], "Setting TRACKING_WEBHOOK_SECRETS: each secret must be at least 16"),
        ("TRACKING_WEBHOOK_SECRETS", "x" * 20, "Setting TRACKING_WEBHOOK_SECRETS must be a list of strings, not str."),
        ("TRACKING_WEBHOOK_BASIC_AUTH", ["user"], "Setting TRACKING_WEBHOOK_BASIC_AUTH: each entry is user:password"),
        ("TRACKING_BATCH_SIZE", 0.5, "Setting TRACKING_BATCH_SIZE=0.5 must be an int, not float."),
        ("DBMAIL_API_SEND_RATE", "lots", "Setting DBMAIL_API_SEND_RATE='lots' must be like 120/min"),
        (
            "MAILGATE_UNKNOWN_RECIPIENT",
            "drop",
            "Setting MAILGATE_UNKNOWN_RECIPIENT='drop' must be one of bounce, notice.",
        ),
        ("MAILGATE_IMAP_LEASE_SECONDS", 5, "Setting MAILGATE_IMAP_LEASE_SECONDS=5 must be at least 10."),
        (
            "MAILGATE_UNVERIFIED_POSTS",
            "allow",
            "Setting MAILGATE_UNVERIFIED_POSTS='allow' must be one of hold, refuse, trust.",
        ),
        (
            "MAILGATE_TRUSTED_AUTHSERV_IDS",
            ["mx.example.org", "mx example.org;"],
            "Setting MAILGATE_TRUSTED_AUTHSERV_IDS=['mx.example.org', 'mx example.org;']: 'mx example.org;' is not "
            "an authserv-id (a host name such as mx.example.org).",
        ),
        (
            "MAILGATE_TRUSTED_AUTHSERV_IDS",
            "mx.example.org",
            "Setting MAILGATE_TRUSTED_AUTHSERV_IDS='mx.example.org' must be a list of strings, not str.",
        ),
    ],
)
def test_the_check_names_a_bad_value_and_why(settings, name, value, message):
    setattr(settings, name, value)
    ((check_id, said),) = app_errors()
    assert check_id == ("mailgate.E001" if name.startswith("MAILGATE_") else "dbmail.E001")
    assert said.startswith(message)
    assert "pw@" not in said and "short" not in said  # secrets never appear


@pytest.mark.parametrize(
    "values,check_id,message",
    [
        (
            {"DBMAIL_RETRY_BASE_SECONDS": 600, "DBMAIL_RETRY_MAX_SECONDS": 300},
            "dbmail.E002",
            "Setting DBMAIL_RETRY_MAX_SECONDS must not be below DBMAIL_RETRY_BASE_SECONDS.",
        ),
        (
            {"TRACKING_WEBHOOK_ENABLED": True, "TRACKING_WEBHOOK_SECRETS": [], "TRACKING_WEBHOOK_BASIC_AUTH": []},
            "dbmail.E003",
            "Setting TRACKING_WEBHOOK_SECRETS (or TRACKING_WEBHOOK_BASIC_AUTH, or TRACKING_WEBHOOK_BEARER_TOKENS) "
            "is required when TRACKING_WEBHOOK_ENABLED is on.",
        ),
        (
            {"EMAIL_USE_TLS": True, "EMAIL_USE_SSL": True},
            "dbmail.E004",
            "Settings EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on.",
        ),
    ],
)
def test_the_check_applies_the_rules_over_several_settings(settings, values, check_id, message):
    for name, value in values.items():
        setattr(settings, name, value)
    assert app_errors() == [(check_id, message)]


def test_a_rule_over_a_value_of_the_wrong_type_is_left_to_that_values_own_error(settings):
    settings.DBMAIL_RETRY_MAX_SECONDS = "an hour"
    assert [check_id for check_id, _ in app_errors()] == ["dbmail.E001"]  # no TypeError from comparing


def test_manage_py_check_reports_a_bad_python_setting_by_name(tmp_path):
    (tmp_path / "bad_settings.py").write_text("from mailsite.settings import *  # noqa\nDBMAIL_BATCH_SIZE = 0\n")
    done = run_manage("check", DJANGO_SETTINGS_MODULE="bad_settings", PYTHONPATH=str(tmp_path))
    assert done.returncode == 1
    assert "dbmail.E001" in done.stderr and "Setting DBMAIL_BATCH_SIZE=0 must be at least 1." in done.stderr


@pytest.mark.parametrize("command", ["check", "dbmail_cron", "mailgate_imap"])
def test_a_bad_environment_value_stops_every_command_with_its_message_and_no_traceback(command):
    done = run_manage(command, DBMAIL_BATCH_SIZE="ten")
    assert done.returncode == 2
    assert done.stderr.startswith("mailsite: Setting DBMAIL_BATCH_SIZE='ten' is not a valid int")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_traceback_on_the_command_line_still_shows_it():
    done = run_manage("check", "--traceback", DBMAIL_BATCH_SIZE="ten")
    assert done.returncode != 0 and "Traceback" in done.stderr and "DBMAIL_BATCH_SIZE" in done.stderr


def test_the_wsgi_application_stops_the_same_way():
    done = subprocess.run(
        [sys.executable, "-c", "import mailsite.wsgi"],
        cwd=ROOT,
        env=environment(DBMAIL_LEASE_SECONDS="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == "mailsite: Setting DBMAIL_LEASE_SECONDS='0' must be at least 1.\n"
