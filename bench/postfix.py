"""Sending through a real MTA: dbmail_cron submitting to a private Postfix that relays to the bench sink.

    python bench/postfix.py                    # 10,000 emails, 3 repetitions (a few minutes)
    python bench/postfix.py --messages 2000 --reps 1
    python bench/postfix.py --senders 2        # two dbmail_cron at once, in both phases

Needs root and Debian's postfix (installed if missing, without starting the
system's; tests/postfix.py runs the instance: its own configuration, queue
and log under a temporary directory, loopback only, Postfix's default
concurrency and queue settings). It recreates BENCH_POSTFIX_DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/mailsite_postfix_bench),
makes N active users and, per repetition, expands a request to them
(bench/expand_child.py) and runs `manage.py dbmail_cron` twice on fresh
expansions: once straight to a fresh bench/sink.py (what `bench/run.py`'s
send phase measures), once to a fresh Postfix whose relayhost is a fresh
sink. Figures (medians of the repetitions, with their spread):

- submit_msgs_s: N / dbmail_cron's wall time (start-up included) against Postfix:
  the rate a site sees, since dbmail_cron is done once Postfix has queued the mail;
- delivered_msgs_s: N / the time from dbmail_cron's start until Postfix's log
  shows the last message taken by the sink;
- direct_msgs_s: dbmail_cron straight to the sink, in the same run; submit_ratio
  is the median submission rate over the median direct rate;
- CPU per message of dbmail_cron, its PostgreSQL backends, Postfix (master and
  all its processes) and the sink.

Every message must reach the sink exactly once (Message-IDs counted there).
The figures go under the key "postfix" of bench/results.json (other keys are
kept). The database is dropped at the end.
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import Sink, child_env, create_request, fresh_database  # noqa: E402

from bench import db, stats  # noqa: E402
from bench import results as bench_results  # noqa: E402
from bench.texts import SENDER  # noqa: E402
from tests import postfix as mta  # noqa: E402

PY = sys.executable
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailsite_postfix_bench"
SENT = re.compile(rb"status=sent \(250 ")  # the smtp client's line for a message the sink took
# What the figures depend on, printed and stored beside them (all Postfix's defaults here).
POSTFIX_SETTINGS = (
    "default_process_limit",
    "default_destination_concurrency_limit",
    "smtp_connection_cache_on_demand",
    "qmgr_message_active_limit",
    "in_flow_delay",
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description="dbmail_cron through a private Postfix to the bench sink")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--senders", type=int, default=1, help="dbmail_cron processes at once (each phase)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the sink to have them all")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--keep-db", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    reason = mta.install() or mta.unavailable()
    if reason:
        raise SystemExit(f"bench: no private Postfix: {reason}")
    load_before = os.getloadavg()
    db_url = os.environ.get("BENCH_POSTFIX_DATABASE_URL", DEFAULT_DB)
    workdir = Path(tempfile.mkdtemp(prefix="mailsite-bench-postfix-"))
    env = child_env(db_url, pycache=workdir / "pycache")
    fresh_database(db_url, env)
    import django

    django.setup()
    from django.db import connection

    from dbmail.models import SenderAccount

    conn = db.connect(db_url)
    try:
        SenderAccount.objects.create(address=SENDER, display_name="The Office")
        db.create_users(conn, 0, args.messages)
        connection.close()
        figures = measure(args, conn, db_url, workdir)
    finally:
        for proc in Sink.running:
            proc.kill()
        connection.close()
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep_db:
            db.drop(db_url)
    load_after = os.getloadavg()
    figures["load_average"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]}
    figures["measured_on"] = date.today().isoformat()
    print_table(figures)
    if args.results:
        bench_results.update(args.results, {"postfix": figures})
        print(f"\nwritten: {args.results} (key 'postfix')")


def measure(args, conn, db_url, workdir):
    n = args.messages
    runs = {"direct": [], "postfix": []}
    version = settings = None
    for rep in range(args.reps):
        for kind in ("direct", "postfix"):
            print(f"rep {rep + 1}/{args.reps}: expanding {n:,}, then dbmail_cron to {kind}", flush=True)
            expected = expand(conn, db_url, workdir, f"{kind}-{rep}", n)
            sink = Sink(workdir, f"{kind}-{rep}")
            server = None
            try:
                if kind == "postfix":
                    # Not under workdir (private to root): the postfix user must reach its queue.
                    server = mta.Postfix(tempfile.mkdtemp(prefix="mailsite-bench-postfix-mta-"), relay_port=sink.port)
                    server.start()
                    version = version or server.postconf("mail_version")
                    settings = settings or {name: server.postconf(name) for name in POSTFIX_SETTINGS}
                run = send(args, db_url, workdir, sink, server, n)
            finally:
                if server is not None:
                    server.stop()
                    shutil.rmtree(server.root, ignore_errors=True)
            report = sink.stop()
            received = set(report["message_ids"])
            run["duplicates"] = report["duplicates"]
            run["missing"] = len(expected - received)
            run["sink_cpu_us"] = report["cpu_seconds"] / max(report["messages"], 1) * 1e6
            if run["missing"] or run["duplicates"] or received != expected:
                raise SystemExit(f"bench: {kind} missed {run['missing']}, duplicated {run['duplicates']}")
            print(f"  {describe(kind, run)}", flush=True)
            runs[kind].append(run)

    def figure(kind, key, digits=1):
        return stats.summary([run[key] for run in runs[kind]], digits)

    submit, direct = figure("postfix", "msgs_s"), figure("direct", "msgs_s")
    return {
        "messages": n,
        "reps": args.reps,
        "senders": args.senders,
        "submit_msgs_s": submit,
        "delivered_msgs_s": figure("postfix", "delivered_msgs_s"),
        "direct_msgs_s": direct,
        "submit_ratio": round(submit["median"] / direct["median"], 3),
        "cpu_us_per_msg": {
            "dbmail_cron": figure("postfix", "cpu_us", 0),
            "dbmail_cron_direct": figure("direct", "cpu_us", 0),
            "postgresql": figure("postfix", "pg_cpu_us", 0),
            "postfix": figure("postfix", "postfix_cpu_us", 0),
            "sink": figure("postfix", "sink_cpu_us", 0),
        },
        "postfix_cpu_us_by_process": {
            name: stats.summary([run["postfix_cpu_us_by_process"].get(name, 0) for run in runs["postfix"]], 0)
            for name in sorted({name for run in runs["postfix"] for name in run["postfix_cpu_us_by_process"]})
        },
        "duplicates": sum(run["duplicates"] for kind in runs for run in runs[kind]),
        "missing": sum(run["missing"] for kind in runs for run in runs[kind]),
        "postfix_version": version,
        "postfix_settings": settings,
    }


def expand(conn, db_url, workdir, name, n):
    """A fresh request to the N users, expanded in a child; the Message-IDs queued."""
    from django.db import connection

    from dbmail.models import TextOfEmail

    db.reset_emails(conn)
    request = create_request()
    done = subprocess.run(
        [PY, str(ROOT / "bench" / "expand_child.py")],
        env=child_env(db_url, pycache=workdir / "pycache"),
        stdout=subprocess.DEVNULL,
    )
    if done.returncode:
        raise SystemExit(f"bench: expansion {name} failed (exit {done.returncode})")
    db.analyze(conn, "dbmail_textofemail", "dbmail_addresstoken")
    expected = set(request.emails.filter(status=TextOfEmail.Status.QUEUED).values_list("message_id", flat=True))
    connection.close()
    if len(expected) != n:
        raise SystemExit(f"bench: expansion {name} queued {len(expected)} emails, expected {n}")
    return expected


def send(args, db_url, workdir, sink, server, n):
    """dbmail_cron to the Postfix `server` (or straight to the sink without one), timed."""
    port = server.port if server else sink.port
    env = child_env(db_url, port, pycache=workdir / "pycache")
    log = server.root / "maillog" if server else None
    cpu_before, postfix_before = children_cpu(), postfix_cpu(server)
    with db.BackendCpu(db_url) as pg:
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [PY, str(ROOT / "manage.py"), "dbmail_cron", "-v", "2"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(args.senders)
        ]
        outputs = [proc.communicate()[0] for proc in procs]
        seconds = time.perf_counter() - started
    cpu = children_cpu() - cpu_before
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode:
            raise SystemExit(f"bench: dbmail_cron failed (exit {proc.returncode}):\n{out}")
    run = {
        "msgs_s": n / seconds,
        "seconds": seconds,
        "cpu_us": cpu / n * 1e6,
        "pg_cpu_us": pg.seconds / n * 1e6,
        "summary": " | ".join(out.strip().splitlines()[-1] for out in outputs if out.strip()),
    }
    if server:
        delivered = wait_delivered(log, n, started + args.timeout)
        if delivered is None:
            raise SystemExit(f"bench: the sink did not get {n:,} messages in {args.timeout:g} s: {server.log()}")
        run["delivered_seconds"] = delivered - started
        run["delivered_msgs_s"] = n / (delivered - started)
        run["postfix_cpu_us"] = (postfix_cpu(server) - postfix_before) / n * 1e6
        # A fresh instance each time: what its processes spent is this run's (start-up is a few ms).
        run["postfix_cpu_us_by_process"] = {
            name: round(seconds / n * 1e6) for name, seconds in sorted(postfix_cpu(server, by_process=True).items())
        }
    return run


def wait_delivered(log, n, deadline):
    """The perf_counter() time at which Postfix's log showed the n-th message taken by the sink, or None."""
    seen, offset = 0, 0
    while time.perf_counter() < deadline:
        with log.open("rb") as file:
            file.seek(offset)
            chunk = file.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only
        seen += len(SENT.findall(chunk, 0, end))
        offset += end
        if seen >= n:
            return time.perf_counter()
        time.sleep(0.02)
    return None


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postfix_cpu(server, by_process=False):
    """CPU seconds of the instance: its master, every live process under it, and those it reaped.

    With `by_process`, a dict of them by process name instead (the reaped ones under "exited").
    """
    if server is None:
        return 0.0
    pid_file = server.root / "queue" / "pid" / "master.pid"
    master = int(pid_file.read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    parts = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            name, _, rest = Path(f"/proc/{entry}/stat").read_text().partition(" (")[2].rpartition(")")
            fields = rest.split()
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(x) / tick for x in fields[11:15])
        if int(entry) == master:
            parts["master"] = parts.get("master", 0) + utime + stime
            parts["exited"] = parts.get("exited", 0) + cutime + cstime  # daemons that ended meanwhile
        elif int(fields[1]) == master:
            parts[name] = parts.get(name, 0) + utime + stime
    return parts if by_process else sum(parts.values())


def describe(kind, run):
    text = f"{kind}: {run['msgs_s']:,.0f} msg/s submitted ({run['seconds']:.1f} s)"
    if "delivered_msgs_s" in run:
        text += f", all at the sink after {run['delivered_seconds']:.1f} s ({run['delivered_msgs_s']:,.0f} msg/s)"
    return f"{text}; dbmail_cron: {run['summary']}"


def print_table(figures):
    n = figures["messages"]
    cpu = figures["cpu_us_per_msg"]
    print(
        f"\n{n:,} emails through Postfix {figures['postfix_version']}, {figures['senders']} sender(s) "
        f"(medians of {figures['reps']}, spread):"
    )
    print(f"  dbmail_cron straight to the sink   {stats.shown(figures['direct_msgs_s'], ' msg/s')}")
    print(f"  dbmail_cron submitting to Postfix  {stats.shown(figures['submit_msgs_s'], ' msg/s')}")
    print(f"  until the sink has them all        {stats.shown(figures['delivered_msgs_s'], ' msg/s')}")
    print(f"  submission / direct                {figures['submit_ratio']:.2f}")
    print("  CPU per message (us): " + ", ".join(f"{name} {value['median']:.0f}" for name, value in cpu.items()))
    print(
        "  Postfix's CPU per message by process (us): "
        + ", ".join(f"{name} {value['median']:.0f}" for name, value in figures["postfix_cpu_us_by_process"].items())
    )
    print(f"  duplicates {figures['duplicates']}, missing {figures['missing']}")
    print("  postfix: " + ", ".join(f"{k}={v}" for k, v in figures["postfix_settings"].items()))
    load = figures["load_average"]
    print(
        f"  load average before {', '.join(map(str, load['before']))}, after {', '.join(map(str, load['after']))}"
        f" ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
