"""Server-side prepared statements for the statements that run thousands of times a second.

PostgreSQL parses and plans every statement it is sent; for a one-row INSERT
of an email that costs more than running it. A statement prepared once per
session (PREPARE) is then only executed (EXECUTE), its plan kept. Prepared
statements live as long as the database session, so each is prepared again
on a new connection (one more round trip, once).

    prepared.execute(cursor, "dbmail_enqueue", "INSERT ... VALUES ($1, $2) RETURNING id", [a, b])

PostgreSQL only: callers keep their portable path for other databases.
"""

_SESSION_ATTR = "dbmail_prepared"


def execute(cursor, name, sql, params, prefix=""):
    """Execute `sql` ($1, $2, ... placeholders) as the prepared statement `name` of this session.

    `prefix`: statements sent before it in the same round trip (e.g. SET LOCAL).
    """
    db = cursor.db  # the connection's wrapper itself: django.db.connection looks it up on every use
    db.ensure_connection()
    session = db.connection
    prepared = getattr(db, _SESSION_ATTR, None)
    if prepared is None or prepared[0] is not session:
        prepared = (session, set())
        setattr(db, _SESSION_ATTR, prepared)
    if name not in prepared[1]:
        # On its own: a prepared statement outlives the transaction that made it, even a failed one,
        # so it is known to exist exactly when this succeeds.
        cursor.execute(f"PREPARE {name} AS {sql}")
        prepared[1].add(name)
    placeholders = ", ".join(["%s"] * len(params))
    cursor.execute(prefix + (f"EXECUTE {name} ({placeholders})" if params else f"EXECUTE {name}"), params)
