import pytest
from django.db import connection
from hypothesis import given
from hypothesis import strategies as st

from dbmail import prepared

from .conftest import fuzz_settings

pytestmark = pytest.mark.django_db

# Text of every kind a caller passes: quotes, backslashes, percent signs, newlines, any plane but NUL.
TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40) | st.sampled_from(
    ["'", "''", "\\", "\\'", "'; DROP TABLE x; --", "%s", "%(a)s", "E'\\x41'", "\u00e9\u6f22\U0001f600"]
)


@fuzz_settings(300)
@given(st.lists(TEXT | st.none() | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4))
def test_the_values_written_by_hand_reach_the_statement_as_they_were(values):
    # prepared.execute writes the EXECUTE's text itself (no psycopg2 quoting): every value must come back
    # out of PostgreSQL exactly, and be the literal psycopg2 would have written.
    types = ["text" if not isinstance(v, int) else "bigint" for v in values]
    sql = "SELECT " + ", ".join(f"${i}::{t}" for i, t in enumerate(types, 1))
    name = "test_literals_" + "_".join(types)
    with connection.cursor() as cursor:
        for value in values:
            assert prepared.literal(cursor, value) == cursor.mogrify("%s", [value]).decode().strip()
        prepared.execute(cursor, name, sql, values)
        assert list(cursor.fetchone()) == values


def test_other_values_are_quoted_by_psycopg2():
    from datetime import UTC, datetime

    moment = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)
    sql = "SELECT $1::timestamptz, $2::bytea, $3::boolean, $4::bigint[]"
    with connection.cursor() as cursor:
        prepared.execute(cursor, "test_other_literals", sql, [moment, b"\x00'\\", True, [1, 2]])
        got = cursor.fetchone()
    assert (got[0], bytes(got[1]), got[2], got[3]) == (moment, b"\x00'\\", True, [1, 2])


def test_a_nul_is_refused_before_anything_is_sent():
    with connection.cursor() as cursor, pytest.raises(ValueError, match="NUL"):
        prepared.execute(cursor, "test_nul", "SELECT $1::text", ["a\x00b"])


def test_a_session_without_standard_strings_gets_psycopg2s_quoting():
    # With standard_conforming_strings off a backslash escapes: quotes written by hand would let
    # 'a\' end early. The session's setting is read on every call, so a SET takes effect at once.
    tricky = "a\\'; SELECT 1; --"
    with connection.cursor() as cursor:
        cursor.execute("SET standard_conforming_strings TO off")
        try:
            prepared.execute(cursor, "test_escapes", "SELECT $1::text", [tricky])
            assert cursor.fetchone() == (tricky,)
            assert not prepared._plain_quotes(connection.connection)
        finally:
            cursor.execute("RESET standard_conforming_strings")
        assert prepared._plain_quotes(connection.connection)
        prepared.execute(cursor, "test_escapes", "", [tricky])
        assert cursor.fetchone() == (tricky,)


@pytest.mark.django_db(transaction=True)
def test_the_kept_cursor_follows_the_session_and_djangos_rules(django_assert_num_queries):
    # prepared.fetchone keeps one cursor per session (enqueue's hot path): a new session gets a new
    # one with its statements prepared again, errors are Django's, and logged queries are still logged.
    from django.db import IntegrityError

    from dbmail.intake import outbox

    first = outbox.enqueue("a@example.net", "s", "t")
    connection.close()
    assert outbox.enqueue("b@example.net", "s", "t").pk > first.pk  # reconnected, prepared again
    with pytest.raises(IntegrityError):  # django.db's, not psycopg2's: the kept cursor is Django's wrapper
        outbox.enqueue("c@example.net", "s", "t", message_id=first.message_id)
    assert outbox.enqueue("d@example.net", "s", "t").pk  # and still usable after it
    with django_assert_num_queries(1):
        outbox.enqueue("e@example.net", "s", "t")


def test_the_kept_cursor_is_refused_in_async_code():
    import asyncio

    from django.core.exceptions import SynchronousOnlyOperation

    from dbmail.intake import outbox

    async def view():
        outbox.enqueue("a@example.net", "s", "t")

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(view())
