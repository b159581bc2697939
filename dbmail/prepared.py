"""Server-side prepared statements for the statements that run thousands of times a second.

PostgreSQL parses and plans every statement it is sent; for a one-row INSERT
of an email that costs more than running it. A statement prepared once per
session (PREPARE) is then only executed (EXECUTE), its plan kept. Prepared
statements live as long as the database session, so each is prepared again
on a new connection (one more round trip, once).

    prepared.execute(cursor, "dbmail_enqueue", "INSERT ... VALUES ($1, $2) RETURNING id", [a, b])

The EXECUTE's values are written into its text here (literal()), not by
psycopg2, and fetchone() runs it on a cursor the session keeps: both were a
measurable part of an enqueue() call (docs/scaling.md, "Enqueue and durability").

PostgreSQL only: callers keep their portable path for other databases.
"""

_SESSION_ATTR = "dbmail_prepared"


class _Session:
    """The statements this module prepared in one database session."""

    __slots__ = ("connection", "names", "cursor")

    def __init__(self, connection):
        self.connection = connection
        self.names = set()
        self.cursor = None  # fetchone()'s, made at its first call


def _plain_quotes(connection):
    """Whether literal() quotes right for this session, as it is now (a SET may change it at any time).

    With standard_conforming_strings on (PostgreSQL's default since 9.1), a backslash in '...' is
    an ordinary character and a doubled quote the only escape; in UTF-8 no byte of a multi-byte
    character is a quote. Both are what the server last reported, which libpq keeps (no round trip).
    """
    info = connection.info
    return info.parameter_status("standard_conforming_strings") == "on" and info.parameter_status(
        "client_encoding"
    ) in ("UTF8", "UNICODE")


def _session(db):
    db.ensure_connection()
    session = getattr(db, _SESSION_ATTR, None)
    if session is None or session.connection is not db.connection:
        session = _Session(db.connection)
        setattr(db, _SESSION_ATTR, session)
    return session


def fetchone(db, name, sql, params, prefix=""):
    """execute() on a cursor this session keeps, then the statement's one row (None: no row).

    For the statements a process runs thousands of times a second: a new cursor per call (a
    psycopg2 cursor and Django's wrapper, made and closed) was about 9 us of an enqueue() call.
    The kept one is Django's wrapper all the same (its errors, its execute wrappers); while
    queries are logged (DEBUG, assertNumQueries) each call takes a new cursor, which logs them.
    """
    if db.queries_logged:
        with db.cursor() as cursor:
            execute(cursor, name, sql, params, prefix)
            return cursor.fetchone()
    session = _session(db)
    db.validate_thread_sharing()
    if session.cursor is None:
        session.cursor = db.make_cursor(db.create_cursor())
    execute(session.cursor, name, sql, params, prefix)
    return session.cursor.fetchone()


def execute(cursor, name, sql, params, prefix=""):
    """Execute `sql` ($1, $2, ... placeholders) as the prepared statement `name` of this session.

    `prefix`: statements sent before it in the same round trip (e.g. SET LOCAL).
    """
    session = _session(cursor.db)  # the connection's wrapper itself: django.db.connection looks it up each use
    if name not in session.names:
        # On its own: a prepared statement outlives the transaction that made it, even a failed one,
        # so it is known to exist exactly when this succeeds.
        cursor.execute(f"PREPARE {name} AS {sql}")
        session.names.add(name)
    if not params:
        cursor.execute(f"{prefix}EXECUTE {name}")
    elif _plain_quotes(session.connection):
        # The statement's text made here, with no parameters for psycopg2 to fill in: its quoting of
        # each value (an adapter object, a call into libpq) was a tenth of an enqueue() call.
        cursor.execute(f"{prefix}EXECUTE {name} ({', '.join([literal(cursor, value) for value in params])})")
    else:
        cursor.execute(f"{prefix}EXECUTE {name} ({', '.join(['%s'] * len(params))})", params)


def literal(cursor, value):
    """`value` as an SQL literal for a session with standard_conforming_strings on, as psycopg2 would write it."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")  # psycopg2's own words
        return "'" + value.replace("'", "''") + "'"
    if value is None:
        return "NULL"
    if kind is int:  # not bool, which psycopg2 writes as true or false
        return str(value)
    return cursor.mogrify("%s", [value]).decode()  # anything else (dates, bytes, JSON, lists) as psycopg2 does
