"""The table queue (dbmail.intake.tablequeue): rows INSERTed with plain SQL are sent once and get the seed's statuses.

Real PostgreSQL tables: the default tbl_mails in the test database, and a
SOWASQL-shaped one in a second database made for the test (tests.queuetables);
a real SMTP server on loopback answers, with scripted refusals.
"""

import io
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.core import checks
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.utils import timezone

from dbmail.exceptions import QueueTableError
from dbmail.intake import smailer, tablequeue
from dbmail.models import QueueTableItem, TextOfEmail

from .conftest import ROOT, manage, subprocess_env
from .factories import SenderAccountFactory
from .queuetables import SEED_TIME, SOWA, attach_queue_database, database_url, insert, row, statuses

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status


@pytest.fixture
def foo():
    return SenderAccountFactory(address="foo@example.com", display_name="Biblioteka")


@pytest.fixture
def sowa(settings, queue_database):
    """The queue in the second database, the SOWASQL way: times as text."""
    settings.DBMAIL_SMAILER_DATABASE = SOWA
    return queue_database


def smailer_cmd(*args):
    out = io.StringIO()
    call_command("smailer", *args, stdout=out, stderr=out)
    return out.getvalue().splitlines()


def cron():
    out = io.StringIO()
    call_command("dbmail_cron", "-v", "2", stdout=out, stderr=out)  # it gives the stop signals back itself
    return out.getvalue()


def insert_many(n, using="default", fld_time="now()"):
    """n rows in one plain INSERT ... SELECT, to r1@example.net ... rn@example.net."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "INSERT INTO tbl_mails (fld_time, fld_sender, fld_address, fld_topic, fld_content) "
            f"SELECT {fld_time}, 'foo@example.com', 'r' || g || '@example.net', 'Zwrot ' || g, 'Treść' "
            "FROM generate_series(1, %s) AS g RETURNING id",
            [n],
        )
        return sorted(r[0] for r in cursor.fetchall())


# --- taking rows in and sending them ---


def test_rows_inserted_with_plain_sql_are_sent_like_spool_items(own_table, foo, smtp_server):
    ids = insert([row(), row(address="Goo@University.org", topic="Zwrot\n  książek", content="Treść\nwiersz 2")])
    lines = smailer_cmd("send")
    assert lines[0] == "table: took in 2 row(s), 2 email(s)"
    assert lines[-2:] == ["sent 2, deferred 0, dropped 0", "table: 2 row(s) S, 0 d, 0 D"]
    assert statuses() == {ids[0]: ("S", ""), ids[1]: ("S", "")}
    first, second = (m.message for m in smtp_server.received)
    assert (first["From"], first["To"], first["Subject"]) == (
        "Biblioteka <foo@example.com>",
        "boo@hisorhermail.com",
        "Upomnienie",
    )
    assert second["Subject"] == "Zwrot książek" and second.get_content().splitlines() == ["Treść", "wiersz 2"]
    link = QueueTableItem.objects.get(row_id=ids[0])
    assert (link.database, link.table, link.written) == ("", "tbl_mails", "S") and link.settled_at
    assert timezone.localtime(link.fld_time).strftime("%d.%m.%Y %H:%M:%S") == SEED_TIME  # TIME_ZONE is UTC
    assert smailer_cmd("queue") == []


def test_a_producers_insert_needs_no_status_time_or_reason(own_table, foo, smtp_server):
    """The seed's producers write the five fields; the table fills in the rest."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tbl_mails (fld_sender, fld_address, fld_topic, fld_content) VALUES (%s, %s, %s, %s) "
            "RETURNING id",
            ["foo@example.com", "ann@example.net", "Hi", "Body"],
        )
        (pk,) = cursor.fetchone()
    assert statuses()[pk] == ("", "")
    cron()
    assert statuses()[pk] == ("S", "")


def test_each_outcome_is_written_back_with_the_seeds_letter_and_reason(own_table, foo, smtp_server, settings):
    smtp_server.script("later@example.net", "451 4.3.0 try later", "250")
    smtp_server.script("gone@example.net", "550 5.1.1 no such user")
    ok, later, gone, stranger, bad = insert(
        [
            row("ok@example.net"),
            row("later@example.net"),
            row("gone@example.net"),
            row("x@example.net", sender="who@example.com"),
            row("not an address"),
        ]
    )
    before = timezone.now()
    cron()
    found = statuses()
    assert found[ok] == ("S", "")
    assert found[later] == ("d", "4.3.0 try later")
    assert found[gone] == ("D", "5.1.1 no such user")
    assert found[stranger] == ("D", "fld_sender 'who@example.com' is not a configured sender account")
    assert found[bad] == ("D", "invalid address 'not an address'")
    assert [m.rcpt_tos for m in smtp_server.received] == [["ok@example.net"]]
    # Deferred table mail keeps spool mail's pace: DBMAIL_SPOOL_RETRY_SECONDS, not the doubling backoff.
    deferred = TextOfEmail.objects.get(table_item__row_id=later)
    assert deferred.status == Status.DEFERRED
    assert before + timedelta(seconds=3600) <= deferred.next_attempt_at <= timezone.now() + timedelta(seconds=3600)

    TextOfEmail.objects.filter(pk=deferred.pk).update(next_attempt_at=timezone.now())  # an hour later
    cron()
    assert statuses()[later] == ("S", "")
    assert statuses()[gone] == ("D", "5.1.1 no such user")  # written once, left alone after
    assert [m.rcpt_tos for m in smtp_server.received] == [["ok@example.net"], ["later@example.net"]]


def test_deferred_table_mail_is_dropped_after_the_spools_attempt_budget(own_table, foo, smtp_server, settings):
    settings.DBMAIL_SPOOL_MAX_ATTEMPTS = 2
    settings.DBMAIL_MAX_ATTEMPTS = 50  # not this one
    smtp_server.script("later@example.net", "451 4.3.0 try later")
    (pk,) = insert([row("later@example.net")])
    cron()
    assert statuses()[pk][0] == "d"
    TextOfEmail.objects.update(next_attempt_at=timezone.now())
    cron()
    assert statuses()[pk] == ("D", "too many attempts (2); last: 4.3.0 try later")


def test_an_empty_table_setting_turns_the_table_queue_off(own_table, foo, settings, smtp_server):
    settings.DBMAIL_SMAILER_TABLE = ""
    (pk,) = insert([row()])
    assert tablequeue.take().rows == 0 and tablequeue.write_back().sent == 0
    cron()
    assert statuses()[pk] == ("", "") and not smtp_server.received
    assert smailer_cmd("queue") == []


def test_a_table_name_is_quoted_so_any_case_works(foo, settings, smtp_server):
    with connection.cursor() as cursor:
        cursor.execute(
            'CREATE TABLE "Kolejka" (id serial PRIMARY KEY, fld_time timestamptz NOT NULL DEFAULT now(), '
            "fld_sender text NOT NULL, fld_address text NOT NULL, fld_topic text NOT NULL DEFAULT '', "
            "fld_content text NOT NULL DEFAULT '', fld_status text, fld_reason text NOT NULL DEFAULT '')"
        )
    settings.DBMAIL_SMAILER_TABLE = "Kolejka"
    (pk,) = insert([row(fld_status=None)], table='"Kolejka"')  # NULL is "waiting" too
    cron()
    assert statuses(table='"Kolejka"') == {pk: ("S", "")}


# --- a row and its email, whatever happens between them ---


def test_a_row_reset_to_waiting_is_not_sent_again_and_gets_its_status_back(own_table, foo, smtp_server):
    (pk,) = insert([row()])
    cron()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE tbl_mails SET fld_status = '' WHERE id = %s", [pk])
    taken = tablequeue.take()
    assert (taken.rows, taken.emails, taken.retaken) == (1, 0, 1)
    assert statuses()[pk] == ("T", "")
    assert tablequeue.write_back().sent == 1
    assert statuses()[pk] == ("S", "")
    assert len(smtp_server.received) == 1 and TextOfEmail.objects.count() == 1


def test_a_row_deleted_before_its_outcome_is_reported_and_the_rest_goes_on(own_table, foo, smtp_server):
    kept, deleted = insert([row("a@example.net"), row("b@example.net")])
    tablequeue.take()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM tbl_mails WHERE id = %s", [deleted])
    lines = smailer_cmd("send")
    assert f"table: row {deleted} is gone; its outcome was not written" in lines
    assert statuses() == {kept: ("S", "")}
    assert len(smtp_server.received) == 2  # its mail was in the outbox already
    assert tablequeue.write_back().gone == []  # reported once


@pytest.mark.parametrize("where", ["own", "second"])
@pytest.mark.django_db(transaction=True)
def test_a_crash_between_the_commits_neither_loses_nor_doubles_a_row(
    request, where, own_table, foo, smtp_server, monkeypatch, settings
):
    using = "default"
    if where == "second":
        request.getfixturevalue("sowa")
        using = SOWA
    when = {"fld_time": SEED_TIME} if using == SOWA else {}
    ids = insert([row(f"r{n}@example.net", **when) for n in range(3)], using=using)

    def killed(*args):
        raise SystemExit("killed between the outbox's commit and the queue's")

    monkeypatch.setattr(tablequeue, "_mark", killed)
    with pytest.raises(SystemExit):
        tablequeue.take()
    monkeypatch.undo()
    assert {s for s, _ in statuses(using).values()} == {""}  # the queue's transaction never committed
    # Elsewhere the emails were committed first; in one database nothing was.
    assert TextOfEmail.objects.count() == (3 if where == "second" else 0)
    # Listed once each all the same: by the email that exists, or by the row still waiting.
    assert len(smailer_cmd("queue")) == 3

    taken = tablequeue.take()
    assert (taken.rows, taken.retaken) == (3, 3 if where == "second" else 0)
    assert TextOfEmail.objects.count() == 3
    assert statuses(using) == {pk: ("T", "") for pk in ids}
    cron()
    assert statuses(using) == {pk: ("S", "") for pk in ids}
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == [f"r{n}@example.net" for n in range(3)]


@pytest.mark.parametrize("where", ["own", "second"])
@pytest.mark.django_db(transaction=True)
def test_takers_at_once_take_each_row_exactly_once(request, where, own_table, foo, settings):
    using = "default"
    if where == "second":
        request.getfixturevalue("sowa")
        using = SOWA
    ids = insert_many(1200, using, fld_time="'17.10.2011 00:00:11'" if using == SOWA else "now()")
    start, results, errors = threading.Barrier(4), [], []

    def taker():
        try:
            if using == SOWA:
                attach_queue_database()
            start.wait()
            results.append(tablequeue.take())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=taker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(r.emails for r in results) == 1200
    assert TextOfEmail.objects.count() == 1200
    assert sorted(QueueTableItem.objects.values_list("row_id", flat=True)) == ids
    assert set(statuses(using).values()) == {("T", "")}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_sender_processes_send_each_row_once(own_table, foo, smtp_server):
    ids = insert_many(80)
    env = subprocess_env(smtp=smtp_server)
    command = [sys.executable, str(ROOT / "manage.py"), "smailer", "send", "-v", "0"]
    processes = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()
        process.stderr.close()
    delivered = sorted(m.rcpt_tos[0] for m in smtp_server.received)
    assert delivered == sorted(f"r{n}@example.net" for n in range(1, 81))
    assert statuses() == {pk: ("S", "") for pk in ids}


# --- the queue in another database ---


def test_a_table_in_another_database_gets_its_statuses_there(sowa, own_table, foo, smtp_server):
    smtp_server.script("gone@example.net", "550 5.1.1 " + "no such user; " * 30)  # longer than the column
    ok, gone, bad = insert(
        [row(fld_time=SEED_TIME), row("gone@example.net", fld_time=SEED_TIME), row(fld_time="yesterday")],
        using=SOWA,
    )
    assert smailer_cmd("queue") == [
        f"17.10.2011000011_{tablequeue.WaitingRow(pk, None, '', '', 'tbl_mails').queue_id}: "
        f"(foo@example.com => {address})"
        for pk, address in [(ok, "boo@hisorhermail.com"), (gone, "gone@example.net")]
    ] + [
        f"yesterday_{tablequeue.WaitingRow(bad, None, '', '', 'tbl_mails').queue_id}: (foo@example.com => boo@hisorhermail.com)"
    ]
    lines = smailer_cmd("send")
    assert lines[0] == "table: took in 3 row(s), 2 email(s)"
    found = statuses(SOWA)
    assert found[ok] == ("S", "")
    assert found[gone][0] == "D" and found[gone][1].startswith("5.1.1 no such user;") and len(found[gone][1]) == 255
    assert found[bad] == ("D", "fld_time 'yesterday' is not dd.mm.yyyy HH:MM:SS")
    assert statuses() == {}  # this site's own table is not involved
    assert set(QueueTableItem.objects.values_list("database", flat=True)) == {SOWA}
    sent = TextOfEmail.objects.get(table_item__row_id=ok)
    assert smailer.line(sent).startswith("17.10.2011000011_")  # the row's own time, read in TIME_ZONE


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sid_with_the_queue_in_a_second_database(sowa, own_table, foo, smtp_server):
    """--sid picks the outbox's database; "{sid}" in DBMAIL_SMAILER_DATABASE picks the queue's, per site."""
    (pk,) = insert([row("ann@example.net", fld_time=SEED_TIME)], using=SOWA)
    env = subprocess_env(smtp=smtp_server)
    env.update(
        DATABASE_URL_OTHER=env["DATABASE_URL"],
        DATABASE_URL=database_url("no_such_mailsite_db"),
        DATABASE_URL_OTHER_QUEUE=database_url(sowa),
        DBMAIL_SMAILER_DATABASE="{sid}_queue",
    )
    listed = manage("smailer", "--sid=other", "queue", env=env)
    assert listed.returncode == 0, listed.stderr
    queue_id = tablequeue.WaitingRow(pk, None, "", "", "tbl_mails").queue_id
    assert listed.stdout.splitlines() == [f"17.10.2011000011_{queue_id}: (foo@example.com => ann@example.net)"]
    sent = manage("smailer", "--sid", "other", "send", env=env)
    assert sent.returncode == 0, sent.stderr
    assert "table: 1 row(s) S, 0 d, 0 D" in sent.stdout
    assert statuses(SOWA) == {pk: ("S", "")}
    assert [m.rcpt_tos for m in smtp_server.received] == [["ann@example.net"]]
    assert QueueTableItem.objects.get().database == "other_queue"
    cron_run = manage("dbmail_cron", "--sid", "other", env=env)
    assert cron_run.returncode == 0, cron_run.stderr
    nowhere = manage("smailer", "--sid", "other", "queue", env={**env, "DBMAIL_SMAILER_DATABASE": "{sid}_archive"})
    assert nowhere.returncode != 0
    assert "no database 'other_archive'" in nowhere.stderr and "DATABASE_URL_OTHER_ARCHIVE" in nowhere.stderr


# --- settings and checks ---


def test_an_unknown_queue_database_fails_clearly_and_in_the_system_check(settings, own_table):
    settings.DBMAIL_SMAILER_DATABASE = "nowhere"
    with pytest.raises(QueueTableError, match=r"DBMAIL_SMAILER_DATABASE='nowhere': there is no database 'nowhere'"):
        tablequeue.take()
    with pytest.raises(CommandError, match="DATABASE_URL_NOWHERE"):
        smailer_cmd("send")
    found = [(e.id, e.msg) for e in checks.run_checks(tags=["dbmail"])]
    assert [i for i, _ in found] == ["dbmail.E010"] and "DBMAIL_SMAILER_DATABASE" in found[0][1]


def test_a_missing_table_or_column_is_named_by_the_check_and_at_run_time(settings, own_table):
    def table_errors():
        return [e.msg for e in checks.run_checks(databases=["default"]) if e.id == "dbmail.E011"]

    assert table_errors() == []  # the default, made by the migration
    settings.DBMAIL_SMAILER_TABLE = "no_such_queue"
    assert table_errors() == [
        "the queue table no_such_queue (DBMAIL_SMAILER_TABLE) in this site's database does not exist"
    ]
    with pytest.raises(CommandError, match=r"the queue table no_such_queue \(DBMAIL_SMAILER_TABLE\).*cannot be used"):
        with transaction.atomic():  # the failed statement would end the test's own transaction
            smailer_cmd("queue")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE half_queue (id serial, fld_time text, fld_sender text, fld_address text)")
    settings.DBMAIL_SMAILER_TABLE = "half_queue"
    assert table_errors() == [
        "the queue table half_queue (DBMAIL_SMAILER_TABLE) in this site's database "
        "has no column fld_topic, fld_content, fld_status, fld_reason"
    ]


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DBMAIL_SMAILER_TABLE", 'tbl_mails"; DROP TABLE x; --', "is not a table name"),
        ("DBMAIL_SMAILER_TABLE", "a.b.c", "is not a table name"),
        ("DBMAIL_SMAILER_DATABASE", "Other-DB", "is not a database alias"),
    ],
)
def test_a_bad_name_stops_start_up_naming_the_setting(name, value, message):
    done = manage("check", env=subprocess_env(**{name: value}))
    assert done.returncode != 0 and f"Setting {name}={value!r} {message}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_schema_qualified_name_is_accepted(settings, own_table, foo, smtp_server):
    settings.DBMAIL_SMAILER_TABLE = "public.tbl_mails"
    (pk,) = insert([row()])
    cron()
    assert statuses() == {pk: ("S", "")}
