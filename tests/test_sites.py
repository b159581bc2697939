"""--sid: the commands work on one named site's database (DATABASE_URL_<SID>) and spool directory."""

import hashlib

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from .conftest import manage, subprocess_env
from .factories import SenderAccountFactory, TextOfEmailFactory
from .spoolfiles import drop, item, xml


def env_for_other_site(**extra):
    """The test database reachable only as site "other"; the default database does not exist."""
    env = subprocess_env(**extra)
    env["DATABASE_URL_OTHER"] = env["DATABASE_URL"]
    db = connection.settings_dict
    env["DATABASE_URL"] = f"postgres://postgres@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/no_such_mailsite_db"
    return env


@pytest.mark.parametrize("command", [("smailer", "queue"), ("dbmail_cron",)])
@pytest.mark.django_db
def test_an_unknown_site_fails_clearly(command):
    with pytest.raises(
        CommandError,
        match=r"unknown site 'nope': the configured sites are default \(add one with "
        r"the setting DATABASE_URL_NOPE\)",
    ):
        call_command(*command, "--sid", "nope")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sid_selects_the_sites_database_and_spool_directory(tmp_path, smtp_server):
    foo = SenderAccountFactory(address="foo@example.com")
    email = TextOfEmailFactory(account=foo, to_address="ann@example.net")
    (tmp_path / "other").mkdir()
    drop(tmp_path / "other", "site.xml", xml(item()))
    env = env_for_other_site(smtp=smtp_server, DBMAIL_SPOOL_DIR=str(tmp_path / "{sid}"))

    listed = manage("smailer", "--sid=other", "queue", "foo@example.com", env=env)
    assert listed.returncode == 0, listed.stderr
    queue_id = hashlib.sha256(email.message_id.encode()).hexdigest()[:16].upper()
    when = f"{email.created_at:%d.%m.%Y%H%M%S}"  # TIME_ZONE is UTC here
    file_item = hashlib.sha256(b"spool:site.xml:1").hexdigest()[:16].upper()  # not taken in yet: listed all the same
    assert listed.stdout.splitlines() == [
        f"{when}_{queue_id}: (foo@example.com => ann@example.net)",
        f"17.10.2011000011_{file_item}: (foo@example.com => boo@hisorhermail.com)",
    ]

    sent = manage("smailer", "send", "--sid", "other", env=env)
    assert sent.returncode == 0, sent.stderr
    assert "sent 2, deferred 0, dropped 0" in sent.stdout
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == ["ann@example.net", "boo@hisorhermail.com"]
    assert (tmp_path / "other/sent/site.xml").exists()

    cron = manage("dbmail_cron", "--sid", "other", env=env)
    assert cron.returncode == 0, cron.stderr

    default = manage("smailer", "queue", env=env)  # the default site's database does not exist
    assert default.returncode != 0 and "cannot reach the database" in default.stderr


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DATABASE_URL_OTHER", "nonsense", "Setting DATABASE_URL_OTHER is not a usable database URL"),
        (
            "DATABASE_URL_DEFAULT",
            "sqlite:////tmp/x.sqlite3",
            "Setting DATABASE_URL_DEFAULT: the default site's database is DATABASE_URL",
        ),
        ("DATABASE_URL_9LIVES", "sqlite:////tmp/x.sqlite3", "Setting DATABASE_URL_9LIVES: the site name must be"),
    ],
)
def test_a_bad_site_database_stops_start_up_naming_it(name, value, message):
    done = manage("check", env={**subprocess_env(), name: value})
    assert done.returncode != 0 and message in done.stderr
