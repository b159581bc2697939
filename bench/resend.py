"""Send the same queued emails again and again: CPU per message, A/B between work trees.

The rates of one run move with whatever else the machine does; the CPU each
message costs moves much less. This requeues the emails of a database left
by `bench/run.py --phases send --reps 1 --keep-db` (10,000 by default), sends
them with `dbmail_cron` to a fresh sink, and prints per run: the rate,
`dbmail_cron`'s CPU per message (its forked processes included, start-up
included), its PostgreSQL backends' CPU per message, the sink's, and the WAL
the server wrote meanwhile per message (the whole server's: another
database's load shows there). With several `--tree`s the runs alternate between them
(A, B, A, B, ...), each tree's own `manage.py` on the same rows, and the
medians per tree come last: the way to tell a change from the noise.

    python bench/run.py --phases send --reps 1 --keep-db      # once: leaves mailsite_bench with 10,000 emails
    python bench/resend.py --runs 3                            # this tree, 3 runs
    python bench/resend.py --tree ../main --tree . --runs 4 --processes 1

The trees must share the database's schema (the same migrations).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import db  # noqa: E402
from bench.run import DEFAULT_DB, Sink, child_env  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--tree", action="append", help="a work tree to run (default: this one); repeat to alternate")
    parser.add_argument("--runs", type=int, default=3, help="runs per tree (default 3)")
    parser.add_argument("--processes", default="auto", help="DBMAIL_SEND_PROCESSES for the runs (default auto)")
    args = parser.parse_args(argv)
    args.tree = [Path(t).resolve() for t in (args.tree or [ROOT])]
    return args


def wal_position(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()")
        return cur.fetchone()[0]


def wal_since(conn, start):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [start])
        return float(cur.fetchone()[0])


def python_of(tree):
    own = tree / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def one_run(conn, db_url, tree, processes, workdir):
    with conn.cursor() as cursor:
        count = db.requeue_emails(cursor)
    sink = Sink(workdir, f"resend-{time.monotonic_ns()}")
    env = child_env(db_url, sink.port, pycache=Path(workdir) / f"pycache-{tree.name}")
    env.update(DBMAIL_SEND_PROCESSES=str(processes), PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wal = wal_position(conn)
    with db.BackendCpu(db_url) as pg:
        started = time.perf_counter()
        proc = subprocess.run(
            [python_of(tree), str(tree / "manage.py"), "dbmail_cron", "-v", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    written = wal_since(conn, wal)
    report = sink.stop()
    if proc.returncode != 0:
        raise SystemExit(f"resend: dbmail_cron failed in {tree} (exit {proc.returncode}):\n{proc.stdout}")
    n = max(report["messages"], 1)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "emails": count,
        "msgs_s": report["messages"] / seconds,
        "cpu_us": cpu / n * 1e6,
        "pg_cpu_us": pg.seconds / n * 1e6,
        "sink_cpu_us": report["cpu_seconds"] / n * 1e6,
        "wal_bytes": written / n,
        "sys_us": (after.ru_stime - before.ru_stime) / n * 1e6,
        # Each switch is a thread or process put to sleep and woken: on some virtual machines that costs
        # far more than the system calls themselves (docs/scaling.md, run 10).
        "switches": ((after.ru_nvcsw + after.ru_nivcsw) - (before.ru_nvcsw + before.ru_nivcsw)) / n,
        "duplicates": report["duplicates"],
        "missing": count - report["unique"],
    }


def shown(run):
    return (
        f"{run['msgs_s']:7,.0f} msg/s  dbmail_cron {run['cpu_us']:4.0f} us/msg ({run['sys_us']:.0f} system)  PostgreSQL {run['pg_cpu_us']:4.0f}"
        f"  sink {run['sink_cpu_us']:4.0f}  WAL {run['wal_bytes']:5,.0f} B/msg  switches {run['switches']:.1f}/msg"
        f"  duplicates {run['duplicates']} missing {run['missing']}"
    )


def main(argv=None):
    args = parse_args(argv)
    conn = db.connect(args.db)
    conn.autocommit = True
    runs = {tree: [] for tree in args.tree}
    with tempfile.TemporaryDirectory(prefix="mailsite-resend-") as workdir:
        # One run of each tree first, not counted: it compiles that tree's bytecode and warms the caches.
        for tree in args.tree:
            one_run(conn, args.db, tree, args.processes, workdir)
        for rep in range(args.runs):
            for tree in args.tree:
                run = one_run(conn, args.db, tree, args.processes, workdir)
                runs[tree].append(run)
                print(f"{tree.name:>16} {rep + 1}: {shown(run)}", flush=True)
    print()
    for tree, done in runs.items():
        medians = {key: statistics.median(r[key] for r in done) for key in done[0]}
        print(f"{tree.name:>16} median of {len(done)}: {shown(medians)}")
    print(json.dumps({str(tree): done for tree, done in runs.items()}))
    conn.close()


if __name__ == "__main__":
    main()
