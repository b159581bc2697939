"""The bench checkpoints before it times claims, and still measures where it may not."""

import os
import uuid

import pytest
from django.db import connection

from bench import db

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="CHECKPOINT is PostgreSQL's"
)


def _url(user):
    settings = connection.settings_dict
    return f"postgres://{user}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_a_superuser_checkpoints():
    conn = db.connect(_url(connection.settings_dict["USER"] or "postgres"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT checkpoints_req FROM pg_stat_bgwriter")
            before = cur.fetchone()[0]
        assert db.checkpoint(conn) is True
        with conn.cursor() as cur:
            cur.execute("SELECT checkpoints_req FROM pg_stat_bgwriter")
            assert cur.fetchone()[0] > before  # the server did one: it was asked, not skipped
    finally:
        conn.close()


@pytest.mark.django_db(transaction=True)
def test_a_role_without_the_right_gets_false_and_a_usable_connection():
    role = f"bench_plain_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN")
        cur.execute(f"GRANT CONNECT ON DATABASE {connection.settings_dict['NAME']} TO {role}")
    conn = db.connect(_url(role))
    try:
        assert db.checkpoint(conn) is False
        with conn.cursor() as cur:  # autocommit: the refusal left no aborted transaction behind
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
        with connection.cursor() as cur:
            cur.execute(f"REVOKE CONNECT ON DATABASE {connection.settings_dict['NAME']} FROM {role}")
            cur.execute(f"DROP ROLE {role}")
