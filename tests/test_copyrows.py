"""COPY rows: every kind of value reads back as written, and rows already there are skipped, not fatal."""

import datetime
import json
import uuid

import pytest
from django.db import connection, transaction

from dbmail.intake import copyrows

pytestmark = pytest.mark.django_db

TRICKY = [
    "",
    "plain",
    "tab\there",
    "new\nline",
    "cr\rlf\r\n",
    "back\\slash \\N \\t",
    "ünïcødé 用户 ✉",
    "'quotes\" and ,;",
]


@pytest.fixture
def table():
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE copy_probe (k text PRIMARY KEY, s text, n bigint, f double precision, "
            "b boolean, j jsonb, t timestamptz, d date, u uuid, raw bytea)"
        )
    yield "copy_probe"


def line(*fields):
    return ("\t".join(fields) + "\n").encode()


@pytest.mark.parametrize("text", TRICKY)
def test_values_read_back_as_written(table, text):
    at = datetime.datetime(2026, 12, 1, 10, 30, 5, 123456, tzinfo=datetime.UTC)
    u = uuid.uuid4()
    doc = {"List-Unsubscribe": f"<https://e.org/u/{text}>", "n": [1, None, text]}
    raw = b"\x00\x01\\\n\xff" + text.encode()
    fields = [copyrows.value(v) for v in ("key", text, -42, 1.5, True)]
    fields += [copyrows.value(doc, json_field=True), copyrows.value(at), copyrows.value(at.date())]
    fields += [copyrows.value(u), copyrows.value(raw)]
    columns = ["k", "s", "n", "f", "b", "j", "t", "d", "u", "raw"]
    with transaction.atomic():
        assert copyrows.copy_new(table, columns, line(*fields)) == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT s, n, f, b, j, t, d, u, raw FROM copy_probe")
        s, n, f, b, j, t, d, got_u, got_raw = cursor.fetchone()
    j = json.loads(j) if isinstance(j, str) else j  # Django leaves jsonb to the field to decode
    assert (s, n, f, b, j, t, d, got_u, bytes(got_raw)) == (text, -42, 1.5, True, doc, at, at.date(), u, raw)


def test_null_and_false(table):
    with transaction.atomic():
        copyrows.copy_new(table, ["k", "s", "b"], line("a", copyrows.value(None), copyrows.value(False)))
    with connection.cursor() as cursor:
        cursor.execute("SELECT s, b FROM copy_probe")
        assert cursor.fetchone() == (None, False)


def test_rows_whose_key_is_already_there_are_skipped_and_the_rest_go_in(table):
    with transaction.atomic():
        assert copyrows.copy_new(table, ["k", "s"], line("a", "first") + line("b", "first")) == 2
        # "a" again: the plain COPY fails on it, so the chunk goes through the temporary table.
        assert copyrows.copy_new(table, ["k", "s"], line("a", "again") + line("c", "new")) == 1
        # And the temporary table starts empty for the next chunk of the same transaction.
        assert copyrows.copy_new(table, ["k", "s"], line("b", "again") + line("d", "new")) == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT k, s FROM copy_probe ORDER BY k")
        assert cursor.fetchall() == [("a", "first"), ("b", "first"), ("c", "new"), ("d", "new")]


def test_a_value_without_a_copy_form_is_refused():
    with pytest.raises(TypeError):
        copyrows.value(object())


@pytest.mark.parametrize(
    "data",
    [{}, {"List-Unsubscribe": "<https://e.org/u/x/>", "X-Name": 'Ann "A" \\ Ünï\n'}, {"n": 1}, [1, "a"], "s", None],
)
def test_json_text_is_what_json_dumps_writes(data):
    assert copyrows.json_text(data) == copyrows.text(json.dumps(data))
