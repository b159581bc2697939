"""Queue tables for the table-queue tests (seed 003, SOWASQL), filled the way producers fill them: plain SQL.

own_table         the default tbl_mails in the test database (migration 0015_table_queue), emptied around the test
queue_database    a second PostgreSQL database, created for the test, with a SOWASQL-shaped tbl_mails
                  (text fld_time, char(1) fld_status), reachable as the database alias "sowa"
"""

import copy
import warnings
from datetime import UTC, datetime

import psycopg2
import pytest
from django.db import connection, connections
from django.db.utils import load_backend

SOWA = "sowa"
# What a SOWASQL installation's own table looks like: the seed's columns, times as text.
SOWASQL_TABLE = """
CREATE TABLE tbl_mails (
    id serial PRIMARY KEY,
    fld_time varchar(19) NOT NULL,
    fld_sender varchar(255) NOT NULL,
    fld_address varchar(255) NOT NULL,
    fld_topic varchar(255) NOT NULL DEFAULT '',
    fld_content text NOT NULL DEFAULT '',
    fld_status char(1) NOT NULL DEFAULT '',
    fld_reason varchar(255) NOT NULL DEFAULT ''
)
"""
SEED_TIME = "17.10.2011 00:00:11"


def insert(rows, using="default", table="tbl_mails"):
    """INSERT rows ({column: value}) as a producer does; returns their ids in order."""
    ids = []
    with connections[using].cursor() as cursor:
        for row in rows:
            columns = ", ".join(row)
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(row))}) RETURNING id",
                list(row.values()),
            )
            ids.append(cursor.fetchone()[0])
    return ids


def row(
    address="boo@hisorhermail.com", sender="foo@example.com", topic="Upomnienie", content="Prosimy o zwrot.", **more
):
    when = more.pop("fld_time", datetime(2011, 10, 17, 0, 0, 11, tzinfo=UTC))
    return {
        "fld_time": when,
        "fld_sender": sender,
        "fld_address": address,
        "fld_topic": topic,
        "fld_content": content,
        **more,
    }


def statuses(using="default", table="tbl_mails"):
    """{id: (fld_status, fld_reason)} of every row (char(1) padding removed)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT id, fld_status, fld_reason FROM {table} ORDER BY id")
        return {pk: ((status or "").strip(), reason) for pk, status, reason in cursor.fetchall()}


def _empty(using="default", table="tbl_mails"):
    # Unmanaged, so pytest-django's flush after a transactional test leaves it alone.
    with connections[using].cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")


@pytest.fixture
def own_table(db):
    _empty()
    yield "tbl_mails"
    _empty()


def _admin_connection(base):
    admin = psycopg2.connect(
        host=base["HOST"] or "127.0.0.1",
        port=base["PORT"] or 5432,
        user=base["USER"] or "postgres",
        password=base["PASSWORD"] or None,
        dbname="postgres",
    )
    admin.autocommit = True
    return admin


def database_url(name):
    base = connection.settings_dict
    return f"postgres://{base['USER'] or 'postgres'}@{base['HOST'] or '127.0.0.1'}:{base['PORT'] or 5432}/{name}"


_queue_settings = {}


def attach_queue_database():
    """Make connections["sowa"] in this thread (each thread has its own connections)."""
    wrapper = load_backend(_queue_settings["ENGINE"]).DatabaseWrapper(copy.deepcopy(_queue_settings), SOWA)
    # Set by hand, not through connections.settings: the test case allows a connection made
    # after it started only when its alias is not one of the configured ones.
    connections[SOWA] = wrapper
    return wrapper


def detach_queue_database():
    if hasattr(connections._connections, SOWA):
        connections[SOWA].close()
        del connections[SOWA]


@pytest.fixture
def queue_database(settings, db):
    """The second database's name; its tbl_mails is reachable as connections["sowa"] during the test."""
    base = connection.settings_dict
    name = f"{base['NAME']}_sowa"
    admin = _admin_connection(base)
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    _queue_settings.clear()
    _queue_settings.update(copy.deepcopy(connections.settings["default"]), NAME=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES": only its list of names is read
        settings.DATABASES = {**settings.DATABASES, SOWA: dict(_queue_settings)}
    with attach_queue_database().cursor() as cursor:
        cursor.execute(SOWASQL_TABLE)
    try:
        yield name
    finally:
        detach_queue_database()
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
