"""The database side of sending, without SMTP: PostgreSQL's CPU per email for claims and outcome writes.

Requeues every email of the database (so use a bench database made by run.py --keep-db),
then claims them 100 at a time and writes each claim's outcomes ("sent") in groups of
GROUP, as the sender's database thread does. The backend's CPU comes from
/proc/PID/schedstat (nanoseconds, so the server must run on this machine), read around
each claim and each write; this process's own thread time beside it. Without the sender,
the sink and their scheduling, it varies far less than a whole run's figures.

    DATABASE_URL=postgres://.../mailsite_bench_x python bench/send_db_cost.py EMAILS GROUP
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from bench import db  # noqa: E402
from dbmail.send import claims, outcomes, retry  # noqa: E402


def main(count, group):
    with connection.cursor() as cursor:
        db.requeue_emails(cursor)
        cursor.execute("SELECT pg_backend_pid()")
        schedstat = f"/proc/{cursor.fetchone()[0]}/schedstat"

    def backend_ns():
        return int(open(schedstat).read().split()[0])

    sent = retry.by_code(250, "2.0.0 Ok: queued as 4Xyz123")
    server = {"claim": 0, "write": 0}
    python = {"claim": 0, "write": 0}
    done, after = 0, None

    def timed(part, func, *args, **kwargs):
        b, p = backend_ns(), time.thread_time_ns()
        result = func(*args, **kwargs)
        server[part] += backend_ns() - b
        python[part] += time.thread_time_ns() - p
        return result

    while done < count:
        batch = timed("claim", claims.claim, 100, after=after)
        if not batch.emails:
            break
        after = batch.after
        for i in range(0, len(batch.emails), group):
            rows = [outcomes.as_row(e, batch.token, sent) for e in batch.emails[i : i + group]]
            timed("write", outcomes.write, rows)
        done += len(batch.emails)
    per = {k: v / done / 1e3 for k, v in server.items()}
    print(
        f"{done} emails, groups of {group}: PostgreSQL claim {per['claim']:.1f} write {per['write']:.1f} "
        f"total {sum(per.values()):.1f} us/email; this process claim {python['claim'] / done / 1e3:.1f} "
        f"write {python['write'] / done / 1e3:.1f} us/email"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
