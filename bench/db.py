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
    "shared_preload_libraries",  # pg_stat_statements and the like add to every statement's cost
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


def checkpoint(conn):
    """CHECKPOINT, so that what was just written is on disk before a latency is measured; False without the right.

    It needs a superuser or the pg_checkpoint role (PostgreSQL 15); without either the bench
    measures all the same, and says so.
    """
    import psycopg2.errors

    with conn.cursor() as cur:
        try:
            cur.execute("CHECKPOINT")
        except psycopg2.errors.InsufficientPrivilege:
            return False
    return True


def reset_emails(conn):
    """Empty the email tables (and what references them), so a repetition starts as the first did."""
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(EMAIL_TABLES)} CASCADE")


# Every email queued and due again, as if just expanded (bench/resend.py, bench/send_db_cost.py).
_REQUEUE = (
    "UPDATE dbmail_textofemail SET status = 'queued', attempts = 0, sent_at = NULL, last_error = '', "
    "next_attempt_at = now() - interval '1 minute', claim_token = NULL, leased_until = NULL, possibly_delivered = 0"
)


def requeue_emails(cursor):
    """Queue every email of the database again, its log and counts gone, vacuumed as after a load; how many.

    `cursor`: psycopg2's or Django's, in autocommit (VACUUM cannot run in a transaction).
    """
    cursor.execute("TRUNCATE dbmail_deliveryevent, dbmail_dailystat, dbmail_dailystatdelta")
    cursor.execute(_REQUEUE)
    count = cursor.rowcount
    cursor.execute("VACUUM ANALYZE dbmail_textofemail")
    cursor.execute("CHECKPOINT")
    return count


def reset_tokens(conn):
    """Forget the unsubscribe tokens, so an expansion stores every one as the first expansion did."""
    with conn.cursor() as cur:
        cur.execute("TRUNCATE dbmail_addresstoken")


def count(conn, sql, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


class BackendCpu:
    """The CPU seconds PostgreSQL's backends spend for the bench database while a phase runs.

    A thread polls pg_stat_activity for the database's backends (but the bench's own) and reads
    each one's CPU time from /proc/<pid>/schedstat (the server runs on this machine), so
    a phase's figure can say how much of each email's cost is PostgreSQL's. Backends that come and
    go between two polls (0.1 s) are missed; the sender's and the expansion's live for the whole run.
    """

    def __init__(self, db_url):
        self.db_url = db_url
        self.seen = {}  # pid -> (start time, CPU seconds at the last poll)
        self.baseline = {}
        self._stop = None
        self._thread = None

    def __enter__(self):
        import threading

        self._conn = connect(self.db_url)
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self._own = cur.fetchone()[0]
        self._stop = threading.Event()
        self._poll(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.1):
            self._poll()

    def _poll(self, first=False):
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s", [self._own]
            )
            pids = [pid for (pid,) in cur.fetchall()]
        for pid in pids:
            got = _proc_cpu(pid)
            if got is None:
                continue
            start, cpu = got
            if first:
                self.baseline[pid] = (start, cpu)
            self.seen[pid] = (start, cpu)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._conn.close()

    @property
    def seconds(self):
        total = 0.0
        for pid, (start, cpu) in self.seen.items():
            base_start, base_cpu = self.baseline.get(pid, (None, 0.0))
            total += cpu - (base_cpu if base_start == start else 0.0)
        return total


def process_cpu(pid):
    """User + system CPU seconds of a process on this machine (a backend: connection.get_backend_pid())."""
    got = _proc_cpu(pid)
    return got[1] if got else 0.0


def _proc_cpu(pid):
    """(start time, CPU seconds) of a process, or None when it is gone.

    The CPU time is the scheduler's (/proc/<pid>/schedstat, in nanoseconds): /proc/<pid>/stat
    counts in clock ticks of 10 ms, too coarse for a statement.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            start = stat.read().rpartition(")")[2].split()[19]
        with open(f"/proc/{pid}/schedstat") as schedstat:
            return start, int(schedstat.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return None
