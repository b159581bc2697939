"""Rows for PostgreSQL's COPY: the text format, and a COPY that skips rows already there.

Expansion writes a request's emails 30,000 a second. A multi-row INSERT
costs the server a parse of every value and the client a quoting of every
parameter; COPY streams tab-separated text that the server reads as it
comes, which is as fast as PostgreSQL can take rows (bench/run.py measures
both side by side). Its one drawback: COPY has no ON CONFLICT, and one
duplicate key aborts the whole statement. `copy_new` therefore copies under
a savepoint and, only when a row is already there, copies the chunk into a
temporary table and inserts from it with ON CONFLICT DO NOTHING
(`insert_new`). A caller that runs its own transactions can do without the
savepoint: `copy`, and after a duplicate a new transaction with `insert_new`.
"""

import datetime
import decimal
import json
import uuid

from django.db import IntegrityError, connection, transaction

NULL = "\\N"
_quote = json.encoder.encode_basestring_ascii  # what json.dumps writes for a string


def text(value):
    """A str as a COPY text field: backslash, tab, newline and carriage return escaped."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    return value


def value(field_value, json_field=False):
    """Any value a model field holds as a COPY text field (JSON fields: `json_field`)."""
    if field_value is None:
        return NULL
    if json_field:
        return json_text(field_value)
    if isinstance(field_value, str):
        return text(field_value)
    if isinstance(field_value, bool):
        return "t" if field_value else "f"
    if isinstance(field_value, int | float | decimal.Decimal | uuid.UUID):
        return str(field_value)
    if isinstance(field_value, datetime.date | datetime.time):  # datetimes too
        return field_value.isoformat()
    if isinstance(field_value, bytes | bytearray | memoryview):
        return "\\\\x" + bytes(field_value).hex()  # bytea's hex form, its backslash escaped for COPY
    raise TypeError(f"no COPY form for {type(field_value).__name__}")


def json_text(data):
    """`data` (JSON) as a COPY text field; a flat object of strings (email headers) without the json module's overhead."""
    if type(data) is dict:
        quote = _quote
        try:
            return text("{" + ", ".join([quote(k) + ": " + quote(v) for k, v in data.items()]) + "}")
        except TypeError:  # a value (or key) that is not a string: the json module's own way
            pass
    return text(json.dumps(data))


def copy_new(table, columns, data, conflict_target=""):
    """COPY `data` (encoded lines) into `table` (`columns`), leaving out rows whose key is already there.

    Runs inside the caller's transaction (Django's); returns the rows inserted.
    """
    try:
        with transaction.atomic():  # a savepoint: a duplicate undoes this COPY only
            return copy(table, columns, data)
    except IntegrityError:
        return insert_new(table, columns, data, conflict_target)


def copy(table, columns, data):
    """A plain COPY of `data` into `table`; returns the rows copied. One duplicate key raises IntegrityError."""
    with connection.cursor() as cursor:
        _copy(cursor, f"COPY {connection.ops.quote_name(table)} ({_names(columns)}) FROM STDIN", data)
        return cursor.rowcount


def insert_new(table, columns, data, conflict_target=""):
    """The rows of `data` whose key is not in `table` yet, by way of a temporary table; returns the rows inserted.

    Slower than copy() (every row is written twice): for a chunk some of whose rows may be there already.
    """
    names = _names(columns)
    with connection.cursor() as cursor:
        stage = connection.ops.quote_name(f"{table}_stage")
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM {connection.ops.quote_name(table)} WITH NO DATA"
        )
        _copy(cursor, f"COPY {stage} ({names}) FROM STDIN", data)
        cursor.execute(
            f"INSERT INTO {connection.ops.quote_name(table)} ({names}) SELECT {names} FROM {stage} "
            f"ON CONFLICT {conflict_target} DO NOTHING"
        )
        inserted = cursor.rowcount
        cursor.execute(f"TRUNCATE {stage}")  # the next chunk of this transaction starts empty
        return inserted


def _names(columns):
    return ", ".join(connection.ops.quote_name(c) for c in columns)


class _Reader:
    """The data as one file-like read: psycopg2 then hands it to the server in one piece."""

    def __init__(self, data):
        self.data = data

    def read(self, size=-1):
        data, self.data = self.data, b""
        return data

    readline = read


def _copy(cursor, sql, data):
    with connection.wrap_database_errors:
        cursor.cursor.copy_expert(sql, _Reader(data), size=max(len(data), 8192))
