"""The outbox benchmark: one command, a table on stdout, the figures merged into bench/results.json.

    make bench                        # or: python bench/run.py            (about ten minutes on two cores)
    python bench/run.py --quick       # every phase at a small scale, for smoke-testing (about two minutes)
    python bench/run.py --phases ceiling,send    # some phases only
    python bench/run.py --memory [--memory-scale 0.1]    # memory only (bench/memory.py), or: make bench BENCH_ARGS=--memory

It recreates the PostgreSQL database BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/mailsite_bench), migrates it (dbmail's
tables and, through bench/peer_settings.py, django-post_office's and
django-mailer's), prints the server settings the figures depend on, and runs
the phases below, each against a fresh lean SMTP sink (bench/sink.py) and
each figure the median of several repetitions with their spread. Every
repetition starts from the same state (the email tables emptied, the tables
just written analysed, as autovacuum would some time later).

ceiling   the raw pipelined client and plain smtplib on prebuilt bytes (bench/wire.py)
send      dbmail_cron sending N queued emails (and the expansion of a request to N before it)
senders   2 and 4 dbmail_cron at once on N emails: rate, duplicates, missing
expand    expansion of a request to BIG users, peak RSS, and PostgreSQL's COPY of the same rows
enqueue   dbmail.intake.outbox.enqueue, one email per call, autocommit
startup   manage.py dbmail_cron on an empty queue
peers     django-post_office and django-mailer on the same messages and sink
history   N due emails among H finished ones: claim latency and send rate; dbmail_purge beside a sender

See bench/README.md for what each figure means. The database is dropped at the end.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench import db, stats, wire  # noqa: E402
from bench import results as bench_results  # noqa: E402
from bench.texts import SENDER, SUBJECT, TEXT_BODY  # noqa: E402

PY = sys.executable
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailsite_bench"
PHASES = ("ceiling", "send", "senders", "expand", "enqueue", "startup", "peers", "history")


TARGETS = {
    "send_ratio": 0.6,
    "expand_emails_s": 30_000,
    "enqueue_msgs_s": 2_000,
    "startup_s": 0.5,
    "rss_growth_mb": 30,
    "over_post_office": 4.0,
    "expand_over_send_many": 1.5,
    "history_drift": 0.10,
}

CEILING_KIND = (
    "raw pipelined client: prebuilt bytes, one connection, RFC 2920 grouping across messages "
    "(each message's content, final dot and the next envelope in one write: one round trip a message)"
)

# (full, quick) scale of each knob.
SCALES = {
    "messages": (10_000, 1_000),
    "big": (100_000, 5_000),
    "reps": (3, 2),
    "ceiling_reps": (5, 3),
    "startup_reps": (5, 3),
    "enqueue": (5_000, 500),
    "peer_messages": (10_000, 1_000),
    "mailer_messages": (2_000, 300),
    "history": (10_000_000, 100_000),
    "purge_rows": (1_000_000, 20_000),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="dbmail outbox benchmark")
    parser.add_argument("--quick", action="store_true", help="small scale, for smoke-testing (figures not comparable)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    for name, (full, quick) in SCALES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {full:,} ({quick:,} with --quick)")
    parser.add_argument("--senders", type=int, nargs="+", help="concurrent sender counts (default 2 4; 2 with --quick)")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run the child processes under cProfile, writing DIR/*.prof "
        "(slows them down: the figures of such a run are not comparable)",
    )
    parser.add_argument(
        "--sample",
        metavar="DIR",
        help="run dbmail_cron under py-spy (bench/requirements.txt), writing DIR/<name>.txt as collapsed "
        "stacks of on-CPU samples: far less distortion than --profile",
    )
    parser.add_argument("--results", help="where to merge the figures (default bench/results.json; none with --quick)")
    parser.add_argument("--keep-db", action="store_true", help="leave the database in place afterwards")
    parser.add_argument("--memory", action="store_true", help="measure memory only (results in bench/memory.json)")
    parser.add_argument(
        "--memory-scale", type=float, default=1.0, help="with --memory: scale 10,000 and 100,000 recipients by this"
    )
    parser.add_argument("--big-emails", type=int, default=20, help="with --memory: ad-hoc emails of --big-email-mb")
    parser.add_argument("--big-email-mb", type=float, default=10.0)
    args = parser.parse_args(argv)
    for name, (full, quick) in SCALES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.senders = args.senders or ([2] if args.quick else [2, 4])
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.results is None and not args.quick:
        args.results = str(BENCH / "results.json")
    return args


# --- the children's environment and the database (also used by bench/gate_worst.py, dashboard.py, pacing.py) ---


def child_env(db_url, smtp_port=None, settings="mailsite.settings", pycache=None, **extra):
    """The environment of a child process: the bench database, DEBUG off, a throw-away SECRET_KEY."""
    env = dict(os.environ)
    # Bytecode is cached (in the run's own directory), as on any installed site: without it every
    # child would compile the project's modules again, about 0.1 s of each start-up.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        PYTHONPYCACHEPREFIX=str(pycache or Path(tempfile.gettempdir()) / "mailsite-bench-pycache"),
        DJANGO_SETTINGS_MODULE=settings,
        DATABASE_URL=db_url,
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-only-not-a-secret-0123456789abcdefghijklmnop",
        DEBUG="false",
        SECURE_SSL_REDIRECT="false",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    if smtp_port is not None:
        env["EMAIL_URL"] = f"smtp://127.0.0.1:{smtp_port}"
    env.update(extra)
    return env


recreate_database = db.recreate
drop_database = db.drop


def measure_with_test_server(measure, args, db_url):
    """Set Django up, run `measure(args, db_url, server)` against the tests' scripted SMTP server, clean up."""
    import django

    django.setup()
    from django.db import connection

    from tests.smtpserver import SMTPServer

    server = SMTPServer().start()
    try:
        return measure(args, db_url, server)
    finally:
        server.stop()
        connection.close()
        if not args.keep_db:
            db.drop(db_url)


def fresh_database(db_url, env):
    """Recreate the bench database, migrate it in a child, and make `env` this process's environment."""
    print(f"recreating {db.name_of(db_url)} and migrating", flush=True)
    db.recreate(db_url)
    subprocess.run([PY, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env, check=True)
    os.environ.update(env)


# --- the sink -----------------------------------------------------------------------------------


class Sink:
    """bench/sink.py in its own process; stop() returns its report."""

    running = []  # killed at exit if a phase fails before stopping its sink

    def __init__(self, workdir, name):
        self.report_path = Path(workdir) / f"sink-{name}.json"
        self.proc = subprocess.Popen(
            [PY, str(BENCH / "sink.py"), "--report", str(self.report_path)], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise SystemExit(f"bench: the sink did not start ({line!r})")
        self.port = int(line)
        Sink.running.append(self.proc)

    def stop(self):
        Sink.running.remove(self.proc)
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=60) != 0:
            raise SystemExit("bench: the sink failed")
        return json.loads(self.report_path.read_text())


# --- the run ------------------------------------------------------------------------------------


class Bench:
    """What every phase needs: the arguments, the database, child processes, and the figures so far."""

    def __init__(self, args):
        self.args = args
        self.db_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
        self.clock = time.perf_counter()
        self.workdir = Path(tempfile.mkdtemp(prefix="mailsite-bench-"))
        self.conn = None
        self.results = {}
        self.rows = []  # (label, value, target) for the table
        self.notes = []
        self.cpu = {}  # phase -> [(our CPU seconds, PostgreSQL's, emails)]

    def step(self, text):
        print(f"[{time.perf_counter() - self.clock:6.1f}s] {text}", flush=True)

    def env(self, smtp_port=None, settings="mailsite.settings", **extra):
        return child_env(self.db_url, smtp_port, settings, pycache=self.workdir / "pycache", **extra)

    def profiled(self, name):
        if not self.args.profile:
            return []
        return ["-m", "cProfile", "-o", str(Path(self.args.profile) / f"{name}.prof")]

    def child(self, script, *argv, name, env=None):
        """Run bench/<script> in a child; the JSON on its last line of output."""
        proc = subprocess.run(
            [PY, *self.profiled(name), str(BENCH / script), *map(str, argv)],
            env=env or self.env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"bench: {script} {' '.join(map(str, argv))} failed (exit {proc.returncode})")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def manage_command(self, name, *argv):
        command = [PY, *self.profiled(name), str(ROOT / "manage.py"), *argv]
        if self.args.sample:
            out = Path(self.args.sample) / f"{name}.txt"
            spy = Path(PY).with_name("py-spy")
            sampler = ["record", "--nonblocking", "--subprocesses", "--rate", "250", "--format", "raw"]
            command = [str(spy), *sampler, "--output", str(out), "--", *command]
        return command

    def start_manage(self, name, *argv, env):
        return subprocess.Popen(
            self.manage_command(name, *argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def figure(self, key, values, digits=1):
        figure = stats.summary(values, digits)
        self.results.setdefault("spread", {})[key] = figure
        self.results[key] = figure["median"]
        return figure

    def row(self, label, value, target=""):
        self.rows.append((label, value, target))


def verdict(ok):
    return "ok" if ok else "MISSED"


# --- shared steps -------------------------------------------------------------------------------


def set_active_users(b, count):
    """Exactly the first `count` bench users are active, so the recipient set all_active is `count` people."""
    with b.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM auth_user")
        have = cur.fetchone()[0]
        if have < count:
            db.create_users(b.conn, have, count - have)
        cur.execute(
            "UPDATE auth_user AS u SET is_active = r.n <= %s FROM "
            "(SELECT id, row_number() OVER (ORDER BY id) AS n FROM auth_user) AS r "
            "WHERE u.id = r.id AND u.is_active IS DISTINCT FROM (r.n <= %s)",
            [count, count],
        )
    db.analyze(b.conn, "auth_user")


def create_request():
    from dbmail.models import MessageRequest, SenderAccount

    sender = SenderAccount.objects.get(address=SENDER)
    return MessageRequest.objects.create(
        sender=sender, subject=SUBJECT, text_body=TEXT_BODY, recipient_set="all_active", context={"term": "spring"}
    )


def expand_fresh(b, name, expected, reset=True):
    """Empty the email tables (or, without `reset`, the tokens only), make a request to the active users
    and expand it in a child.

    Returns (request, emails/s, peak RSS MB); the new rows are analysed afterwards.
    """
    if reset:
        db.reset_emails(b.conn)
    else:
        db.reset_tokens(b.conn)
    request = create_request()
    with db.BackendCpu(b.db_url) as pg:
        figures = b.child("expand_child.py", name=name)
    if figures["emails"] != expected:
        raise SystemExit(f"bench: expansion made {figures['emails']} emails, expected {expected}")
    db.analyze(b.conn, "dbmail_textofemail", "dbmail_addresstoken")
    b.cpu.setdefault("expand", []).append((figures["cpu_seconds"], pg.seconds, expected))
    return request, figures["emails"] / figures["seconds"], figures["peak_rss_kb"] / 1024


def send_phase(b, request, n_procs, name):
    """Run n_procs dbmail_cron processes at once on the request's queued emails."""
    from dbmail.models import TextOfEmail

    expected = set(request.emails.filter(status=TextOfEmail.Status.QUEUED).values_list("message_id", flat=True))
    sink = Sink(b.workdir, name)
    env = b.env(sink.port)
    cpu_before = _children_cpu()
    with db.BackendCpu(b.db_url) as pg:
        started, started_at = time.perf_counter(), time.time()
        procs = [b.start_manage(f"{name}-{i}", "dbmail_cron", "-v", "2", env=env) for i in range(n_procs)]
        outputs = [p.communicate()[0] for p in procs]
        seconds, ended_at = time.perf_counter() - started, time.time()
    cpu = _children_cpu() - cpu_before  # the sink still runs: only the senders were reaped
    report = sink.stop()
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"bench: dbmail_cron failed (exit {proc.returncode}):\n{out}")
    received = set(report["message_ids"])
    return {
        "msgs_s": len(expected) / seconds,
        "seconds": seconds,
        "duplicates": report["duplicates"],
        "missing": len(expected - received),
        "unexpected": len(received - expected),
        "sink_cpu_us": report["cpu_seconds"] / max(report["messages"], 1) * 1e6,
        "cpu_us": cpu / max(len(expected), 1) * 1e6,
        "pg_cpu_us": pg.seconds / max(len(expected), 1) * 1e6,
        "summaries": [out.strip().splitlines()[-1] if out.strip() else "" for out in outputs],
        # The command's wall time in three: until the sink's first message, its first to last, after its last.
        "to_first_s": report["first_at"] - started_at if report["first_at"] else None,
        "first_to_last_s": report["last_at"] - report["first_at"] if report["first_at"] else None,
        "after_last_s": ended_at - report["last_at"] if report["last_at"] else None,
    }


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_NO_CHECKPOINT = "claims measured without a CHECKPOINT first (it needs a superuser or the pg_checkpoint role)"


def claim_latencies(b, name, settle=True):
    """Milliseconds per claim of one batch, claiming every due email once (then given back).

    `settle`: a checkpoint first. What a bulk load or an expansion just wrote is then on disk,
    and neither the empty table's claims nor the history's pay for the other's background
    writes (the history's 4 GB load left minutes of them; with one measurement each, taken
    without it, the history's claims came out -27 % to +24 % of the empty table's).
    """
    if settle and not db.checkpoint(b.conn) and _NO_CHECKPOINT not in b.notes:
        b.notes.append(_NO_CHECKPOINT)
    return b.child("claim_child.py", name=name)["ms"]


def prebuilt_messages(request):
    """The request's emails as the exact bytes dbmail sends them: (envelope sender, [recipient], bytes),
    and the CPU each took to compose in this process (microseconds, median of three passes)."""
    from dbmail.send import mime
    from dbmail.send.message import to_email_message

    emails = list(request.emails.select_related("account").order_by("pk"))
    passes = []
    for _ in range(3):
        built, started = [], time.process_time()
        for email in emails:
            # The bench has no DKIM key, so dbmail_cron sends these unsigned too; sign=False only keeps this
            # process from counting them as unsigned mail (bench/dkim_cost.py measures signing).
            data = mime.compose(email, sign=False)
            if data is None:
                data = to_email_message(email).message().as_bytes(linesep="\r\n")
            built.append((email.envelope_sender, [email.to_address], data))
        passes.append((time.process_time() - started) / max(len(emails), 1) * 1e6)
    return built, passes


def machine():
    """What the figures depend on besides the code: the processor, as the kernel names it."""
    info = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cache size") and key not in info:
                    info[key] = value.strip()
    except OSError:
        pass
    return {"cpu": info.get("model name", "unknown"), "cache": info.get("cache size", "unknown")}


# --- phases -------------------------------------------------------------------------------------


def ceiling_once(b, prepared, name):
    """One repetition of the ceiling to a fresh sink: (msg/s, the client's CPU a message in us, the sink's)."""
    n = len(prepared)
    sink = Sink(b.workdir, name)
    started, client_cpu = time.perf_counter(), time.process_time()
    accepted = wire.pipelined("127.0.0.1", sink.port, prepared)
    rate = accepted / (time.perf_counter() - started)
    client_us = (time.process_time() - client_cpu) / n * 1e6
    report = sink.stop()
    if report["messages"] != n or accepted != n:
        raise SystemExit(f"bench: the sink got {report['messages']} of {n} ceiling messages")
    return rate, client_us, report["cpu_seconds"] / n * 1e6


def phase_ceiling(b):
    n, args = b.args.messages, b.args
    set_active_users(b, n)
    b.step(f"expanding a request to {n:,} (warm-up) and building its messages as bytes")
    request, _, _ = expand_fresh(b, "expand-warmup", n)
    messages, compose_us = prebuilt_messages(request)
    size = sum(len(m[2]) for m in messages) / len(messages)
    prepared = wire.prepare(messages)
    b.ceiling_bytes = prepared  # phase_send measures the ceiling again beside each of its repetitions
    rates, cpu, client = [], [], []
    for rep in range(args.ceiling_reps):
        b.step(f"ceiling: raw pipelined client, {n:,} messages, repetition {rep + 1}/{args.ceiling_reps}")
        rate, client_us, sink_us = ceiling_once(b, prepared, f"ceiling-{rep}")
        rates.append(rate)
        client.append(client_us)
        cpu.append(sink_us)
    ceiling = b.figure("ceiling_msgs_s", rates)
    b.results["ceiling_kind"] = CEILING_KIND
    smtplib_rates = []
    for rep in range(args.reps):
        b.step(f"reference: plain smtplib, one connection, repetition {rep + 1}/{args.reps}")
        sink = Sink(b.workdir, f"smtplib-{rep}")
        started = time.perf_counter()
        accepted = wire.smtplib_client("127.0.0.1", sink.port, messages)
        smtplib_rates.append(accepted / (time.perf_counter() - started))
        sink.stop()
    smtp_ref = b.figure("smtplib_msgs_s", smtplib_rates)
    b.results["message_bytes"] = round(size)
    b.row("ceiling: raw pipelined client, 1 connection", stats.shown(ceiling, " msg/s"), "(reference)")
    b.row("  plain smtplib, 1 connection (4 round trips)", stats.shown(smtp_ref, " msg/s"), "")
    b.results["ceiling_cpu_us_per_msg"] = {"client": stats.summary(client), "sink": stats.summary(cpu)}
    b.notes.append(
        f"messages of {size:,.0f} bytes on average; CPU per message under the ceiling: the raw client "
        f"{stats.summary(client)['median']:.0f} us, the sink {stats.summary(cpu)['median']:.0f} us"
    )
    # The ceiling is mostly the kernel's work (two system calls a message), a sender mostly the
    # interpreter's: machines differ in the one more than in the other, and the send ratio with them
    # (docs/scaling.md, run 10). One message composed alone says where this machine stands.
    here = b.results["machine"] = {**machine(), "compose_us": stats.summary(compose_us, 1)}
    b.notes.append(
        f"this machine: {here['cpu']} ({here['cache']} cache); composing one "
        f"message alone {here['compose_us']['median']:.1f} us of CPU, the raw client's whole message "
        f"{stats.summary(client)['median']:.0f} us: the send ratio follows the first much more than the second"
    )
    # The first send of a fresh database warms PostgreSQL's caches; it is not one of the repetitions.
    b.step(f"warm-up: dbmail_cron sending those {n:,} (not counted)")
    warm = send_phase(b, request, 1, "send-warmup")
    b.notes.append(f"warm-up send (not counted): {warm['msgs_s']:,.0f} msg/s")


def phase_send(b):
    n, args = b.args.messages, b.args
    set_active_users(b, n)
    expand_rates, rss, send_rates, cpu, pg_cpu, sink_cpu, summaries, claim_ms = [], [], [], [], [], [], [], []
    paired = []  # (the ceiling just before, the send): how fast the machine was at that moment, and how fast we were
    phases = []  # each send's result: its wall time split at the sink's first and last message
    prepared = getattr(b, "ceiling_bytes", None)
    for rep in range(args.reps):
        b.step(f"expanding a request to {n:,}, then dbmail_cron sending it, repetition {rep + 1}/{args.reps}")
        request, rate, peak = expand_fresh(b, f"expand-small-{rep}", n)
        expand_rates.append(rate)
        rss.append(peak)
        claim_ms += claim_latencies(b, f"claims-{rep}")
        beside = ceiling_once(b, prepared, f"ceiling-beside-{rep}")[0] if prepared is not None else None
        result = send_phase(b, request, 1, f"send-{rep}")
        if beside is not None:
            paired.append((beside, result["msgs_s"]))
        if result["missing"] or result["duplicates"]:
            raise SystemExit(f"bench: the send phase missed {result['missing']}, duplicated {result['duplicates']}")
        send_rates.append(result["msgs_s"])
        cpu.append(result["cpu_us"])
        pg_cpu.append(result["pg_cpu_us"])
        sink_cpu.append(result["sink_cpu_us"])
        summaries.append(result["summaries"][0])
        phases.append(result)
    # Every repetition's claims together, as the history phase pools its own.
    b.results.setdefault("history", {})["claim_ms_empty"] = stats.summary(claim_ms, 2)
    send = b.figure("send_msgs_s", send_rates)
    small = b.figure("expand_emails_s_10k", expand_rates)
    b.figure("rss_mb_10k", rss)
    b.row(f"dbmail_cron sending {n:,} (start-up included)", stats.shown(send, " msg/s"), "")
    if "ceiling_msgs_s" in b.results:
        ratio = send["median"] / b.results["ceiling_msgs_s"]
        b.results["send_ratio"] = round(ratio, 3)
        b.row(
            "send / ceiling (medians)",
            f"{ratio:.2f}",
            f">= {TARGETS['send_ratio']}  {verdict(ratio >= TARGETS['send_ratio'])}",
        )
    if paired:
        # The machine's speed drifts within a run, and the ceiling and the sender drift with it: each
        # send against the ceiling measured just before it says less about the moment it ran in.
        ratios = [sent / ceiling for ceiling, sent in paired]
        b.results["send_ratio_paired"] = stats.summary(ratios, 3)
        b.results["ceiling_msgs_s_paired"] = stats.summary([ceiling for ceiling, _ in paired])
        b.row("  each send / the ceiling just before it", stats.shown(b.results["send_ratio_paired"], "", ".2f"), "")
    split = [p for p in phases if p["first_to_last_s"]]
    if split:
        # Not a target: how much of the command's time is start-up and ending, and the rate between them.
        b.results["send_wall_split_s"] = {
            key: stats.summary([p[key] for p in split], 3) for key in ("to_first_s", "first_to_last_s", "after_last_s")
        }
        steady = b.results["send_msgs_s_first_to_last"] = stats.summary([(n - 1) / p["first_to_last_s"] for p in split])
        wall = b.results["send_wall_split_s"]
        b.row(
            "  its first to last message (start-up / ending left out)",
            stats.shown(steady, " msg/s"),
            f"{wall['to_first_s']['median']:.2f} s to the first, {wall['after_last_s']['median']:.2f} s after the last",
        )
        if "ceiling_msgs_s" in b.results:
            b.results["send_ratio_first_to_last"] = round(steady["median"] / b.results["ceiling_msgs_s"], 3)
    b.row(f"expansion, {n:,} recipients", stats.shown(small, " emails/s"), "")
    b.results["send_cpu_us_per_msg"] = {
        "dbmail_cron": stats.summary(cpu),
        "postgresql": stats.summary(pg_cpu),
        "sink": stats.summary(sink_cpu),
    }
    b.notes.append(
        f"1 sender: {summaries[-1]}; CPU per message: dbmail_cron {stats.summary(cpu)['median']:.0f} us "
        f"(start-up included), its PostgreSQL backends {stats.summary(pg_cpu)['median']:.0f} us, "
        f"the sink {stats.summary(sink_cpu)['median']:.0f} us"
    )


def phase_senders(b):
    n, args = b.args.messages, b.args
    set_active_users(b, n)
    out = []
    for procs in args.senders:
        rates, dups, missing, unexpected, summaries = [], 0, 0, 0, []
        for rep in range(args.reps):
            b.step(f"{procs} dbmail_cron at once on {n:,} new emails, repetition {rep + 1}/{args.reps}")
            request, _, _ = expand_fresh(b, f"expand-for-{procs}-{rep}", n)
            result = send_phase(b, request, procs, f"send-{procs}-{rep}")
            rates.append(result["msgs_s"])
            dups += result["duplicates"]
            missing += result["missing"]
            unexpected += result["unexpected"]
            summaries = result["summaries"]
        figure = stats.summary(rates)
        out.append({"n": procs, "msgs_s": figure["median"], "spread": figure, "duplicates": dups, "missing": missing})
        clean = dups == 0 and missing == 0 and unexpected == 0
        b.row(
            f"{procs} senders at once, {n:,} (x{args.reps})",
            stats.shown(figure, " msg/s"),
            f"dup {dups}, missing {missing}  {verdict(clean)}",
        )
        b.notes.append(f"{procs} senders: " + " | ".join(summaries))
    b.results["senders"] = out


def phase_expand(b):
    big, args = b.args.big, b.args
    set_active_users(b, big)
    rates, rss = [], []
    for rep in range(args.reps):
        b.step(f"expanding a request to {big:,}, repetition {rep + 1}/{args.reps}")
        _, rate, peak = expand_fresh(b, f"expand-big-{rep}", big)
        rates.append(rate)
        rss.append(peak)
    expand = b.figure("expand_emails_s_100k", rates)
    peak_big = b.figure("rss_mb_100k", rss)
    ours = stats.summary([c / e * 1e6 for c, _, e in b.cpu["expand"][-args.reps :]])
    theirs = stats.summary([p / e * 1e6 for _, p, e in b.cpu["expand"][-args.reps :]])
    b.results["expand_cpu_us_per_email"] = {"expansion": ours, "postgresql": theirs}
    b.step(f"PostgreSQL's own COPY of those {big:,} rows, {args.reps} times")
    copy_rates, mb = copy_ceiling(b)
    copy = b.figure("copy_rows_s", copy_rates)
    target = TARGETS["expand_emails_s"]
    b.row(
        f"expansion, {big:,} recipients",
        stats.shown(expand, " emails/s"),
        f">= {target:,}  {verdict(expand['median'] >= target)}",
    )
    b.row(f"  PostgreSQL COPY of the same {big:,} rows", stats.shown(copy, " rows/s"), "(its ceiling)")
    b.notes.append(
        f"expansion at {expand['median'] / copy['median']:.2f} of PostgreSQL's COPY of the same rows "
        f"({mb:.0f} MB in COPY text format); CPU per email: the expanding process {ours['median']:.0f} us "
        f"(all its threads, its writing process too), its PostgreSQL backends {theirs['median']:.0f} us; "
        f"PostgreSQL's CPU per row under COPY {b.results['copy_cpu_us_per_row']['median']:.0f} us"
    )
    small = b.results.get("rss_mb_10k")
    if small is not None:
        growth = peak_big["median"] - small
        b.row(
            f"peak RSS expanding {args.messages:,} / {big:,}",
            f"{small:.1f} / {peak_big['median']:.1f} MB",
            f"growth <= {TARGETS['rss_growth_mb']} MB ({growth:+.1f})  {verdict(growth <= TARGETS['rss_growth_mb'])}",
        )
    set_active_users(b, args.messages)


def copy_ceiling(b):
    """COPY the last expansion's rows into a copy of the email table (same indexes) in chunks as expansion commits."""
    import io

    from dbmail.conf import settings as conf

    chunk = conf.DBMAIL_EXPAND_CHUNK
    with b.conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_copy")
        cur.execute("CREATE TABLE bench_copy (LIKE dbmail_textofemail INCLUDING ALL)")
        cur.execute(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = 'dbmail_textofemail'::regclass AND attnum > 0 AND NOT attisdropped AND attname <> 'id'"
        )
        columns = cur.fetchone()[0]
        chunks = []
        cur.execute("SELECT min(id), max(id) FROM dbmail_textofemail")
        low, high = cur.fetchone()
        for start in range(low, high + 1, chunk):
            buf = io.BytesIO()
            cur.copy_expert(
                f"COPY (SELECT {columns} FROM dbmail_textofemail WHERE id >= {start} AND id < {start + chunk}) "
                "TO STDOUT",
                buf,
            )
            chunks.append(buf.getvalue())
    rows = b.args.big
    sync = "off" if conf.DBMAIL_ASYNC_COMMIT else "on"  # the commit mode expansion's chunks use
    rates, server_cpu = [], []
    backend = b.conn.get_backend_pid()
    b.conn.autocommit = False
    try:
        for _ in range(b.args.reps):
            with b.conn.cursor() as cur:
                cur.execute("TRUNCATE bench_copy")
                b.conn.commit()
                cpu_before = db.process_cpu(backend)
                started = time.perf_counter()
                for data in chunks:
                    cur.execute(f"SET LOCAL synchronous_commit TO {sync}")
                    cur.copy_expert(f"COPY bench_copy ({columns}) FROM STDIN", io.BytesIO(data), size=len(data))
                    b.conn.commit()
                rates.append(rows / (time.perf_counter() - started))
                server_cpu.append((db.process_cpu(backend) - cpu_before) / rows * 1e6)
        with b.conn.cursor() as cur:
            cur.execute("DROP TABLE bench_copy")
        b.conn.commit()
    finally:
        b.conn.autocommit = True
    b.results["copy_cpu_us_per_row"] = stats.summary(server_cpu)
    return rates, sum(map(len, chunks)) / 1e6


def phase_enqueue(b):
    count, args = b.args.enqueue, b.args
    rates = []
    db.reset_emails(b.conn)
    for rep in range(args.reps):
        b.step(f"enqueue: {count:,} calls of one email each, repetition {rep + 1}/{args.reps}")
        figures = b.child("enqueue_child.py", count, SENDER, name=f"enqueue-{rep}")
        rates.append(figures["calls"] / figures["seconds"])
        db.reset_emails(b.conn)
    figure = b.figure("enqueue_msgs_s", rates)
    # The same with each commit waiting for the WAL flush (DBMAIL_ASYNC_ENQUEUE=false): the disk's figure.
    durable, calls = [], max(1, count // 5)
    for rep in range(args.reps):
        b.step(f"enqueue with DBMAIL_ASYNC_ENQUEUE=false: {calls:,} calls, repetition {rep + 1}/{args.reps}")
        env = b.env(DBMAIL_ASYNC_ENQUEUE="false")
        figures = b.child("enqueue_child.py", calls, SENDER, name=f"enqueue-durable-{rep}", env=env)
        durable.append(figures["calls"] / figures["seconds"])
        db.reset_emails(b.conn)
    flushed = b.figure("enqueue_msgs_s_flushed", durable)
    target = TARGETS["enqueue_msgs_s"]
    b.row(
        "enqueue(), one email per call, autocommit",
        stats.shown(figure, " calls/s"),
        f">= {target:,}  {verdict(figure['median'] >= target)}",
    )
    b.row("  each commit waiting for the WAL flush", stats.shown(flushed, " calls/s"), "DBMAIL_ASYNC_ENQUEUE=false")


def phase_startup(b):
    db.reset_emails(b.conn)
    times = []
    for rep in range(b.args.startup_reps):
        b.step(f"start-up: manage.py dbmail_cron on an empty queue, repetition {rep + 1}/{b.args.startup_reps}")
        started = time.perf_counter()
        proc = b.start_manage(f"startup-{rep}", "dbmail_cron", env=b.env(smtp_port=9))
        out = proc.communicate()[0]
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"bench: dbmail_cron failed on an empty queue:\n{out}")
    figure = b.figure("startup_s", times, digits=3)
    target = TARGETS["startup_s"]
    b.row(
        "dbmail_cron start-up, empty queue",
        stats.shown(figure, " s", ".2f"),
        f"<= {target}  {verdict(figure['median'] <= target)}",
    )


def phase_peers(b):
    from bench import peers

    peers.run(b)


def phase_history(b):
    from bench import history

    history.run(b)


# --- the report ---------------------------------------------------------------------------------


def print_table(rows, notes):
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print()
    print(f"{'figure'.ljust(width)}  {'median (min-max, n)'.rjust(vwidth)}  target")
    print(f"{'-' * width}  {'-' * vwidth}  {'-' * 30}")
    for label, value, target in rows:
        print(f"{label.ljust(width)}  {value.rjust(vwidth)}  {target}")
    print()
    for note in notes:
        print(note)


def main(argv=None):
    args = parse_args(argv)
    b = Bench(args)
    for folder in (args.profile, args.sample):
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    b.step(f"recreating {db.name_of(b.db_url)} and migrating (dbmail, django-post_office, django-mailer)")
    db.recreate(b.db_url)
    for settings in ("mailsite.settings", "bench.peer_settings"):
        subprocess.run(
            [PY, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=b.env(settings=settings), check=True
        )
    os.environ.update(b.env())
    import django

    django.setup()
    from django.db import connection

    from dbmail.conf import settings as conf
    from dbmail.models import SenderAccount

    b.conn = db.connect(b.db_url)
    server = db.server_settings(b.conn)
    b.results.update(server={**server, "set_by_bench": dict(db.DATABASE_SETTINGS)})
    b.notes.append(
        "server: "
        + ", ".join(f"{k}={v}" for k, v in server.items())
        + f"; set by the bench for its database: {db.DATABASE_SETTINGS or 'nothing'}"
    )
    b.notes.append(
        f"dbmail settings: DBMAIL_ASYNC_COMMIT={conf.DBMAIL_ASYNC_COMMIT}, DBMAIL_BATCH_SIZE={conf.DBMAIL_BATCH_SIZE}, "
        f"DBMAIL_EXPAND_CHUNK={conf.DBMAIL_EXPAND_CHUNK}, DBMAIL_OUTCOME_WINDOW={conf.DBMAIL_OUTCOME_WINDOW}"
    )
    try:
        SenderAccount.objects.create(address=SENDER, display_name="The Office")
        if args.memory:
            from bench import memory

            return memory.run(b)
        b.step(f"creating {args.messages:,} users")
        set_active_users(b, args.messages)
        for phase in PHASES:
            if phase in args.phases:
                globals()[f"phase_{phase}"](b)
    finally:
        for proc in Sink.running:
            proc.kill()
        shutil.rmtree(b.workdir, ignore_errors=True)
        connection.close()
        if b.conn is not None:
            b.conn.close()
        if not args.keep_db:
            db.drop(b.db_url)

    load_after = os.getloadavg()
    b.results.update(
        load_average={"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        cpus=os.cpu_count(),
        measured_on=date.today().isoformat(),
        quick=args.quick,
        phases=args.phases,
        seconds=round(time.perf_counter() - b.clock),
    )
    if args.results:
        bench_results.update(args.results, b.results)  # other benchmarks' keys (gate_worst, dashboard) stay
    b.notes.append(
        f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {', '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs); "
        f"total {time.perf_counter() - b.clock:.0f}s"
    )
    b.notes.append(f"figures merged into {args.results}" if args.results else "figures not written (--quick)")
    if args.profile:
        b.notes.append(f"profiles in {args.profile} (cProfile slows the children: do not compare these figures)")
    print_table(b.rows or [("(no figures)", "", "")], b.notes)


if __name__ == "__main__":
    main()
