"""The dashboard's queries on a large email table: one command, times and EXPLAIN plans on stdout.

    python bench/dashboard.py                 # 10,000,000 emails (several minutes and about 4 GB of disk)
    python bench/dashboard.py --rows 1000000  # a quicker run

It recreates the PostgreSQL database BENCH_DASHBOARD_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/mailsite_dashboard_bench), migrates it, bulk-loads N emails
with generate_series (spread over --days days, --requests requests and --accounts sender
accounts, with a realistic mix of outcomes), builds the daily roll-up from them the way the
migration does for an existing site (timed), adds a minute's worth of pending roll-up rows as
busy senders leave them between two dbmail_cron runs, and then times:

- the dashboard (dbmail.rollup.figures for the last 30 days: every query it makes);
- the requests list's delivery columns (rollup.per_request for one page of requests);
- the same dashboard figures computed straight from the email table, for comparison;
- the live counts the request page and the list still make from the email table;
- one page of a request's emails; the merge dbmail_cron runs.

Each is run three times and the best time is shown; EXPLAIN (ANALYZE, BUFFERS) plans follow.
The database is dropped at the end unless --keep-db is given. See docs/scaling.md#dashboard.
"""

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailsite_dashboard_bench"


def parse_args(argv):
    parser = argparse.ArgumentParser(description="dashboard queries on a large email table")
    parser.add_argument("--rows", type=int, default=10_000_000, help="emails to load (default 10,000,000)")
    parser.add_argument("--days", type=int, default=90, help="days the emails are spread over")
    parser.add_argument("--requests", type=int, default=500, help="requests the emails belong to")
    parser.add_argument("--accounts", type=int, default=5, help="sender accounts")
    parser.add_argument("--pending", type=int, default=6000, help="deltas not merged yet (a busy minute)")
    parser.add_argument("--keep-db", action="store_true", help="leave the database in place afterwards")
    return parser.parse_args(argv)


def setup_django(db_url):
    os.environ.update(
        DATABASE_URL=db_url,
        DJANGO_SETTINGS_MODULE="mailsite.settings",
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-only-not-a-secret-0123456789abcdefghijklmnop",
        DEBUG="false",
        SECURE_SSL_REDIRECT="false",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()


# --- loading ---------------------------------------------------------------------------------

# Outcome mix per thousand emails (a list of a few thousand opted-in addresses looks like this).
MIX = [("delivered", 900), ("sent", 40), ("bounced", 20), ("cancelled", 18), ("dropped", 10), ("deferred", 10)]
# complained takes the rest (2 per thousand)

EMAILS_SQL = """
INSERT INTO dbmail_textofemail (request_id, account_id, to_address, to_name, from_header, envelope_sender,
    reply_to, subject, text, html, headers, message_id, status, status_changed_at, attempts, next_attempt_at,
    sent_at, last_error, created_at{other_columns})
SELECT r.id, r.sender_id, 'rcpt' || g || '@example.org', '', 'Office <office@example.org>', 'bounces@example.org',
       '', 'Bench', 'Hello.', '', '{{}}', '<' || g || '@bench.example.org>', s.status, s.at + interval '5 minutes',
       1, s.at, CASE WHEN s.status IN ('sent', 'delivered', 'bounced', 'complained') THEN s.at END, '', s.at
       {other_values}
  FROM (
    SELECT g,
           1 + (g::bigint * %(requests)s / (%(rows)s + 1)) AS request_no,
           -- oldest first, as ids are; the newest emails are minutes old
           now() - ((%(rows)s - g)::float / %(rows)s) * %(days)s * interval '1 day' AS at,
           {status} AS status
      FROM generate_series(1, %(rows)s) AS g
  ) AS s
  JOIN dbmail_messagerequest AS r ON r.id = s.request_no + %(first_request)s - 1
"""


def status_case():
    parts, edge = [], 0
    for status, share in MIX:
        edge += share
        parts.append(f"WHEN (g::bigint * 7919) %% 1000 < {edge} THEN '{status}'")
    return "CASE " + " ".join(parts) + " ELSE 'complained' END"


def load(args):
    from django.db import connection
    from django.utils import timezone

    from bench.history import other_email_columns
    from dbmail.models import MessageRequest, SenderAccount

    accounts = SenderAccount.objects.bulk_create(
        SenderAccount(address=f"sender{n}@example.org") for n in range(args.accounts)
    )
    now = timezone.now()
    requests = MessageRequest.objects.bulk_create(
        MessageRequest(
            sender=accounts[n % len(accounts)],
            subject=f"Letter {n}",
            text_body="Hello.",
            recipient_set="all_active",
            status=MessageRequest.Status.EXPANDED,
            created_at=now - timedelta(days=args.days * (args.requests - n) / args.requests),
        )
        for n in range(args.requests)
    )
    given = {
        "request_id", "account_id", "to_address", "to_name", "from_header", "envelope_sender", "reply_to", "subject",
        "text", "html", "headers", "message_id", "status", "status_changed_at", "attempts", "next_attempt_at",
        "sent_at", "last_error", "created_at",
    }  # fmt: skip
    other_columns, _, defaults = other_email_columns(given)
    # Named parameters here: each default its own.
    other_values = "".join(f", %(default_{i})s" for i in range(len(defaults)))
    params = {"rows": args.rows, "requests": args.requests, "days": args.days, "first_request": requests[0].pk}
    params.update({f"default_{i}": value for i, value in enumerate(defaults)})
    with connection.cursor() as cursor:
        cursor.execute(
            EMAILS_SQL.format(status=status_case(), other_columns=other_columns, other_values=other_values), params
        )
        cursor.execute(
            """INSERT INTO dbmail_suppression (address, reason, note, created_at)
               SELECT 'gone' || g || '@example.org', 'unsubscribed', '', now() - random() * %s * interval '1 day'
                 FROM generate_series(1, %s) AS g""",
            [args.days, max(1, args.rows // 1000)],
        )
    return requests


def build_rollup():
    """The migration's estimate from the emails' current status: what an upgrade costs once."""
    import importlib

    from django.apps import apps
    from django.db import connection

    migration = importlib.import_module("dbmail.migrations.0009_dashboard")
    migration.backfill(apps, connection.schema_editor())


def add_pending(args, requests):
    """Deltas as the senders leave them: one per batch and key, until the next dbmail_cron merges them."""
    from django.utils import timezone

    from dbmail.models import DailyStatDelta

    today = timezone.localdate()
    recent = requests[-3:]
    DailyStatDelta.objects.bulk_create(
        (
            DailyStatDelta(day=today, account_id=r.sender_id, request_id=r.pk, sent=100, deferred=1)
            for n in range(args.pending)
            for r in [recent[n % len(recent)]]
        ),
        batch_size=2000,
    )


# --- measuring -------------------------------------------------------------------------------


def best_of(fn, runs=3):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def queries_of(fn):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        fn()
    return [q["sql"] for q in captured.captured_queries]


def explain(sql):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def measurements(args, requests):
    from django.db.models import Count
    from django.db.models.functions import Lower, TruncDate
    from django.utils import timezone

    from dbmail import rollup
    from dbmail.models import TextOfEmail

    end = timezone.localdate()
    start = end - timedelta(days=29)
    page = [r.pk for r in requests[-50:]]
    biggest = requests[len(requests) // 2]
    since = timezone.now() - timedelta(days=30)

    def straight_from_emails():
        return list(
            TextOfEmail.objects.filter(status_changed_at__gte=since)
            .annotate(day=TruncDate("status_changed_at"))
            .values("day", "account_id", "status")
            .annotate(n=Count("id"))
            .order_by()
        )

    def request_page_counts():
        return biggest.status_counts()

    def list_page_counts():
        return list(
            TextOfEmail.objects.filter(request_id__in=page)
            .values("request_id", "status")
            .annotate(n=Count("id"))
            .order_by()
        )

    def emails_page():
        return list(
            biggest.emails.order_by(Lower("to_address"), "pk").only("id", "request_id", "to_address", "status")[:50]
        )

    return [
        ("dashboard: rollup.figures(), last 30 days", lambda: rollup.figures(start, end)),
        ("list: delivery columns of 50 requests (rollup.per_request)", lambda: rollup.per_request(page)),
        ("for comparison: 30 days per day/account/status from the emails", straight_from_emails),
        (f"request page: live status counts of one request ({biggest.pk})", request_page_counts),
        ("list: live status counts of 50 requests (progress bars)", list_page_counts),
        ("request page: one page of its emails, by address", emails_page),
    ]


def main(argv=None):
    args = parse_args(argv)
    db_url = os.environ.get("BENCH_DASHBOARD_DATABASE_URL", DEFAULT_DB)
    from bench.run import drop_database, recreate_database

    def step(text):
        print(f"-- {text}", flush=True)

    recreate_database(db_url)
    setup_django(db_url)
    from django.core.management import call_command
    from django.db import connection

    from dbmail import rollup
    from dbmail.models import DailyStat

    try:
        step("migrating")
        call_command("migrate", verbosity=0)
        step(f"loading {args.rows:,} emails over {args.days} days, {args.requests} requests")
        clock = time.perf_counter()
        requests = load(args)
        load_seconds = time.perf_counter() - clock
        step(f"loaded in {load_seconds:.1f}s; building the roll-up as the migration does")
        clock = time.perf_counter()
        build_rollup()
        rollup_seconds = time.perf_counter() - clock
        add_pending(args, requests)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
            cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('dbmail_textofemail'))")
            size = cursor.fetchone()[0]
        rows = DailyStat.objects.count()
        step(f"roll-up built in {rollup_seconds:.1f}s: {rows:,} rows, and {args.pending:,} deltas; emails {size}")

        results, plans = [], []
        for name, fn in measurements(args, requests):
            seconds = best_of(fn)
            results.append((name, seconds))
            plans.append((name, [explain(sql) for sql in queries_of(fn)]))
        clock = time.perf_counter()
        folded = rollup.merge_all()
        merge_seconds = time.perf_counter() - clock
        results.append((f"dbmail_cron's merge of {folded:,} deltas", merge_seconds))

        print()
        print(f"{'query':<68} {'best of 3':>10}")
        for name, seconds in results:
            print(f"{name:<68} {1000 * seconds:>8.1f} ms")
        print(
            f"\nemails {args.rows:,} ({size}); loading {load_seconds:.1f}s; roll-up from the emails {rollup_seconds:.1f}s"
        )
        for name, explained in plans:
            print(f"\n=== {name}")
            for plan in explained:
                print(plan)
                print()
    finally:
        connection.close()
        if not args.keep_db:
            drop_database(db_url)


if __name__ == "__main__":
    main()
