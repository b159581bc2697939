"""Start-up fails on bad settings, naming the setting; production settings pass check --deploy."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "mailsite.settings",
    "DEBUG": "false",
    "SECRET_KEY": "x" * 60 + "-production-like-but-not-a-real-secret",
    "ALLOWED_HOSTS": "mail.example.org",
    "DATABASE_URL": "sqlite:////tmp/mailsite-settings-test.sqlite3",
}


def environment(**env):
    """A clean environment: the test run's own settings variables must not leak in. None removes a variable."""
    full = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    full.update(PRODUCTION)
    full.update(env)
    return {k: v for k, v in full.items() if v is not None}


def run_manage(*args, **env):
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_check_deploy():
    done = run_manage("check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("SECRET_KEY", None, "SECRET_KEY is required when DEBUG is off"),
        ("DBMAIL_BATCH_SIZE", "ten", "DBMAIL_BATCH_SIZE='ten' is not a valid int"),
        ("DBMAIL_LEASE_SECONDS", "0", "DBMAIL_LEASE_SECONDS='0' must be at least 1"),
        ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
        ("EMAIL_PORT", "smtp", "EMAIL_PORT='smtp' is not a valid int"),
        ("DEFAULT_FROM_EMAIL", "nobody", "DEFAULT_FROM_EMAIL='nobody' is not an email address"),
        ("DBMAIL_RETRY_MAX_SECONDS", "10", "DBMAIL_RETRY_MAX_SECONDS must not be below"),
        ("EMAIL_URL", "smtp://host:port", "EMAIL_URL"),
        ("DATABASE_URL", "postgress://postgres@127.0.0.1/mailsite", "DATABASE_URL is not a usable database URL"),
        ("DBMAIL_UNSUBSCRIBE_MAILTO", "un+sub@example.org", "DBMAIL_UNSUBSCRIBE_MAILTO='un+sub@example.org'"),
        ("DBMAIL_UNSUBSCRIBE_MAILTO", "u" * 38 + "@example.org", "at most 37 characters"),
        ("MAILGATE_LIST_DOMAINS", "lists.example.org,not_a_domain", "MAILGATE_LIST_DOMAINS: 'not_a_domain'"),
        ("API_SCHEMA_PUBLIC", "perhaps", "API_SCHEMA_PUBLIC='perhaps' is not a boolean"),
        ("DBMAIL_API_SEND_RATE", "lots", "DBMAIL_API_SEND_RATE='lots' must be like 120/min"),
        ("DBMAIL_API_SEND_RATE", "0/min", "DBMAIL_API_SEND_RATE='0/min'"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(name, value, message):
    done = run_manage("check", **{name: value})
    assert done.returncode == 2
    assert done.stderr.startswith("mailsite: Setting") and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "env,message",
    [
        ({"EMAIL_USE_TLS": "true", "EMAIL_USE_SSL": "true"}, "EMAIL_USE_TLS and EMAIL_USE_SSL"),
        (
            {"TRACKING_WEBHOOK_ENABLED": "true"},
            "TRACKING_WEBHOOK_SECRETS (or TRACKING_WEBHOOK_BASIC_AUTH, or TRACKING_WEBHOOK_BEARER_TOKENS) is required",
        ),
        ({"TRACKING_WEBHOOK_SECRETS": "short"}, "TRACKING_WEBHOOK_SECRETS: each secret must be at least 16"),
        (
            {"TRACKING_QUEUE_URL": "http://u:pw@host/"},
            "TRACKING_QUEUE_URL must be an amqp:// or amqps:// URL, not http:",
        ),
        ({"DBMAIL_VERP_DOMAIN": "not a domain"}, "DBMAIL_VERP_DOMAIN='not a domain' is not a domain name"),
        ({"MAILGATE_UNKNOWN_RECIPIENT": "drop"}, "MAILGATE_UNKNOWN_RECIPIENT='drop' must be one of bounce, notice"),
        ({"MAILGATE_UNVERIFIED_POSTS": "yes"}, "MAILGATE_UNVERIFIED_POSTS='yes' must be one of hold, refuse, trust"),
        ({"MAILGATE_TRUSTED_AUTHSERV_IDS": "mx.example.org,(mx)"}, "'(mx)' is not an authserv-id"),
    ],
)
def test_the_apps_rules_stop_start_up_too(env, message):
    done = run_manage("check", **env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "pw@" not in done.stderr  # a URL's password is never shown


def test_the_apps_settings_take_their_defaults_and_their_environment_values():
    code = (
        "from django.conf import settings as s; "
        "print(s.DBMAIL_BATCH_SIZE, s.DBMAIL_SITE_URL, repr(s.DBMAIL_MESSAGE_ID_DOMAIN), s.DBMAIL_UNSUBSCRIBE_MAILTO, "
        "s.MAILGATE_SEND_NOW_MAX, s.TRACKING_WEBHOOK_SECRETS)"
    )
    done = run_manage(
        "shell", "--no-imports", "-c", code,
        DBMAIL_SITE_URL="https://mail.example.org/", DEFAULT_FROM_EMAIL="Club <club@club.example>", DBMAIL_BATCH_SIZE="7",
    )  # fmt: skip
    assert done.stdout.split() == [
        "7",
        "https://mail.example.org",
        "''",  # empty: each Message-ID takes its From address's domain
        "unsubscribe@club.example",
        "20",
        "[]",
    ]


def test_email_url_sets_the_smtp_settings():
    code = (
        "from django.conf import settings as s; print(s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_HOST_USER, s.EMAIL_BACKEND)"
    )
    done = run_manage("shell", "--no-imports", "-c", code, EMAIL_URL="smtp://u:p@relay.example.org:2525")
    assert done.stdout.split() == ["relay.example.org", "2525", "u", "dbmail.backends.SMTPBackend"], done.stderr


def _commands():
    names = []
    for app in ("dbmail", "mailgate"):
        names += sorted(p.stem for p in (ROOT / app / "management" / "commands").glob("[a-z]*.py"))
    return names


@pytest.mark.parametrize("command", _commands())
def test_every_command_prints_a_settings_error_in_one_line(command):
    # Without DEBUG and without SECRET_KEY: the message alone, whatever the command, and exit 2.
    done = run_manage(command, SECRET_KEY=None)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("mailsite: Setting SECRET_KEY is required when DEBUG is off")
    assert done.stdout == ""


@pytest.mark.parametrize("debug", ["true", "false"])
def test_each_log_line_is_printed_once(debug):
    # make run (DEBUG on) printed Django's own lines twice: its console handler and the root's.
    code = (
        "import logging, django; django.setup(); "
        "logging.getLogger('django.request').warning('Not Found: /nowhere/'); "
        "logging.getLogger('dbmail.send.dkim').warning('dkim: a line of ours')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment(DEBUG=debug),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["Not Found: /nowhere/", "dkim: a line of ours"]
