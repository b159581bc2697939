"""The benchmark's own PostgreSQL database: made fresh, filled in bulk, reset between repetitions, and described.

Everything here talks to the server directly (psycopg2, autocommit), never
through Django, so that the bench's own bookkeeping costs the measured
processes nothing and works before and after Django has migrated.
"""

from urllib.parse import urlsplit

# Per-database settings the benchmark makes (ALTER DATABASE ... SET) because a figure depends on them.
# Empty: every figure is measured with the server's defaults. The server's own values of the settings
# that move these figures are printed with every run (REPORTED), so a run elsewhere can be compared.
DATABASE_SETTINGS = {}

REPORTED = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_level",
    "full_page_writes",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "jit",
    "autovacuum",
    "work_mem",
    "random_page_cost",
)

FIRST_NAMES = ["Ann", "Bob", "Cyril", "Dora", "Emil", "Fay", "Gus", "Hana"]
LAST_NAMES = ["Novak", "Smith", "Kowalska", "Berg", "Olsen", "Moreau"]

# Tables that hold what one repetition made; emptied so the next starts from the same state.
EMAIL_TABLES = ("dbmail_textofemail", "dbmail_addresstoken", "dbmail_dailystatdelta", "dbmail_dailystat")


def _parts(db_url):
    parts = urlsplit(db_url)
    return {
        "user": parts.username or "postgres",
        "password": parts.password,
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
    }, parts.path.lstrip("/")


def name_of(db_url):
    return _parts(db_url)[1]


def connect(db_url, maintenance=False):
    """An autocommit connection to the bench database (or, with `maintenance`, to `postgres`)."""
    import psycopg2

    params, name = _parts(db_url)
    conn = psycopg2.connect(dbname="postgres" if maintenance else name, **params)
    conn.autocommit = True
    return conn


def recreate(db_url):
    """Drop and create the database, then make the per-database settings of DATABASE_SETTINGS."""
    name = name_of(db_url)
    conn = connect(db_url, maintenance=True)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
        for key, value in DATABASE_SETTINGS.items():
            cur.execute(f'ALTER DATABASE "{name}" SET {key} = %s', [value])
    conn.close()


def drop(db_url):
    conn = connect(db_url, maintenance=True)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name_of(db_url)}" WITH (FORCE)')
    conn.close()


def server_settings(conn):
    """{name: value as the bench's own sessions see it} for REPORTED and DATABASE_SETTINGS."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            [list(REPORTED) + list(DATABASE_SETTINGS)],
        )
        return dict(cur.fetchall())


def create_users(conn, start, count):
    """`count` active users bench<start>..., with names, in one statement."""
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                                   is_staff, is_active, date_joined)
            SELECT '!', false, 'bench' || lpad(g::text, 7, '0'), (%s::text[])[g %% 8 + 1], (%s::text[])[g %% 6 + 1],
                   'bench' || lpad(g::text, 7, '0') || '@example.net', false, true, now()
              FROM generate_series(%s, %s) AS g
            """,
            [FIRST_NAMES, LAST_NAMES, start, start + count - 1],
        )
    analyze(conn, "auth_user")


def analyze(conn, *tables):
    """VACUUM ANALYZE: what autovacuum does some time after a bulk load (the bench cannot wait for it)."""
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"VACUUM ANALYZE {table}")


def reset_emails(conn):
    """Empty the email tables (and what references them), so a repetition starts as the first did."""
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(EMAIL_TABLES)} CASCADE")


def reset_tokens(conn):
    """Forget the unsubscribe tokens, so an expansion stores every one as the first expansion did."""
    with conn.cursor() as cur:
        cur.execute("TRUNCATE dbmail_addresstoken")


def count(conn, sql, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]
