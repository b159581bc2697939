"""The outbox benchmark: one command, a table on stdout, the figures in bench/results.json.

    make bench                     # or: python bench/run.py [--messages N] [--big N] [--profile DIR]

It recreates the PostgreSQL database BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/mailsite_bench), migrates it, and then, in
this order, each phase against a fresh lean SMTP sink (bench/sink.py):

1. expansion of a request to N users (all_active) in a child process: emails/s and peak RSS;
2. the ceiling: the same N messages, prebuilt as bytes, sent by plain smtplib over one connection;
3. `manage.py dbmail_cron` sending those N emails: N / wall time including its start-up;
4. 2 and then 4 dbmail_cron processes at once on N fresh emails: total rate, duplicates, missing;
5. expansion of a request to BIG users: emails/s and peak RSS.

See bench/README.md for what each figure means. The database is dropped at the end.

    python bench/run.py --memory [--memory-scale 0.1]    # or: make bench BENCH_ARGS=--memory

measures memory instead (nothing else): the peak RSS of one dbmail_cron
child sending 20 ad-hoc emails of 10 MB, and of one expanding and sending a
request to 10,000 and then to 100,000 recipients (both scaled by
--memory-scale), written to bench/memory.json.
"""

import argparse
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
from bench import results as bench_results  # noqa: E402

PY = sys.executable
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailsite_bench"

SUBJECT = "News from {{ site_name }} for {{ first_name }}"
# About the size of a real newsletter's text part (~1.5 kB), with a few per-recipient variables.
TEXT_BODY = (
    "Dear {{ name }},\n\n"
    + "This is the monthly letter of {{ site_name }}. " * 4
    + "\n\n"
    + "The timetable for the coming term is now online, and the library keeps its longer opening hours "
    "until the end of the month. Please bring back any books you borrowed before the holidays. "
    * 6
    + "\n\nYour account: {{ username }} ({{ email }})\n"
    "To stop receiving these letters: {{ unsubscribe_url }}\n"
)

TARGETS = {"send_ratio": 0.7, "expand_emails_s": 10_000, "rss_growth_mb": 30}
# Body bytes a sender may hold (DBMAIL_BATCH_MAX_BYTES, default 20 MB) plus the message being built and
# written (a few copies of one body) above Django's own size.
MEMORY_TARGET_OVER_START_MB = 120


def parse_args(argv):
    parser = argparse.ArgumentParser(description="dbmail outbox benchmark")
    parser.add_argument("--messages", type=int, default=10_000, help="emails per send phase and small expansion")
    parser.add_argument("--big", type=int, default=100_000, help="recipients of the large expansion")
    parser.add_argument("--senders", type=int, nargs="+", default=[2, 4], help="concurrent sender counts")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="run the child processes under cProfile, writing DIR/*.prof "
        "(slows them down: the figures of such a run are not comparable)",
    )
    parser.add_argument("--results", default=str(BENCH / "results.json"))
    parser.add_argument("--memory", action="store_true", help="measure memory only (results in bench/memory.json)")
    parser.add_argument(
        "--memory-scale", type=float, default=1.0, help="with --memory: scale 10,000 and 100,000 recipients by this"
    )
    parser.add_argument("--big-emails", type=int, default=20, help="with --memory: ad-hoc emails of --big-email-mb")
    parser.add_argument("--big-email-mb", type=float, default=10.0)
    parser.add_argument("--keep-db", action="store_true", help="leave the database in place afterwards")
    return parser.parse_args(argv)


# --- environment and database ---------------------------------------------------------------


def child_env(db_url, smtp_port=None):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mailsite.settings",
        DATABASE_URL=db_url,
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-only-not-a-secret-0123456789abcdefghijklmnop",
        DEBUG="false",
        SECURE_SSL_REDIRECT="false",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    if smtp_port is not None:
        env["EMAIL_URL"] = f"smtp://127.0.0.1:{smtp_port}"
    return env


def recreate_database(db_url):
    import psycopg2

    parts = urlsplit(db_url)
    name = parts.path.lstrip("/")
    conn = psycopg2.connect(
        dbname="postgres",
        user=parts.username or "postgres",
        password=parts.password,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def drop_database(db_url):
    import psycopg2

    parts = urlsplit(db_url)
    conn = psycopg2.connect(
        dbname="postgres",
        user=parts.username or "postgres",
        password=parts.password,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
    conn.close()


# --- the sink ---------------------------------------------------------------------------------


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
        if self.proc.wait(timeout=30) != 0:
            raise SystemExit("bench: the sink failed")
        return json.loads(self.report_path.read_text())


# --- phases -------------------------------------------------------------------------------------


def create_users(start, count):
    from django.contrib.auth import get_user_model

    User = get_user_model()
    firsts = ["Ann", "Bob", "Cyril", "Dora", "Emil", "Fay", "Gus", "Hana"]
    lasts = ["Novak", "Smith", "Kowalska", "Berg", "Olsen", "Moreau"]
    batch = []
    for i in range(start, start + count):
        name = f"bench{i:07d}"
        batch.append(
            User(
                username=name,
                email=f"{name}@example.net",
                first_name=firsts[i % 8],
                last_name=lasts[i % 6],
                password="!",
                is_active=True,
            )
        )
        if len(batch) == 5000:
            User.objects.bulk_create(batch)
            batch = []
    User.objects.bulk_create(batch)


def create_request(sender):
    from dbmail.models import MessageRequest

    return MessageRequest.objects.create(
        sender=sender,
        subject=SUBJECT,
        text_body=TEXT_BODY,
        recipient_set="all_active",
        context={"term": "spring"},
    )


def profiled(args, name):
    return ["-m", "cProfile", "-o", str(Path(args.profile) / f"{name}.prof")] if args.profile else []


def expand_phase(args, db_url, name):
    """Expand the due request in a child; (emails, seconds, the child's peak RSS in MB)."""
    proc = subprocess.run(
        [PY, *profiled(args, name), str(BENCH / "expand_child.py")],
        env=child_env(db_url),
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: expansion failed (exit {proc.returncode})")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures["emails"], figures["seconds"], figures["peak_rss_kb"] / 1024


def prebuilt_messages(request):
    """The request's emails as the exact bytes dbmail's SMTP backend would send."""
    from django.core.mail.message import sanitize_address

    from dbmail.send.message import to_email_message

    built = []
    for email in request.emails.select_related("account").order_by("pk"):
        message = to_email_message(email)
        recipients = [sanitize_address(addr, "utf-8") for addr in message.recipients()]
        built.append((email.envelope_sender, recipients, message.message().as_bytes(linesep="\r\n")))
    return built


def ceiling_phase(workdir, messages):
    sink = Sink(workdir, "ceiling")
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
        smtp.ehlo()
        for from_addr, to_addrs, data in messages:
            smtp.sendmail(from_addr, to_addrs, data)
    seconds = time.perf_counter() - started
    report = sink.stop()
    if report["messages"] != len(messages):
        raise SystemExit(f"bench: the sink got {report['messages']} of {len(messages)} ceiling messages")
    return len(messages) / seconds, report


def send_phase(args, db_url, workdir, request, n_procs, name):
    """Run n_procs dbmail_cron processes at once on the request's queued emails."""
    from dbmail.models import TextOfEmail

    expected = set(request.emails.filter(status=TextOfEmail.Status.QUEUED).values_list("message_id", flat=True))
    sink = Sink(workdir, name)
    env = child_env(db_url, sink.port)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [PY, *profiled(args, f"{name}-{i}"), str(ROOT / "manage.py"), "dbmail_cron", "-v", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n_procs)
    ]
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - started
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
        "summaries": [out.strip().splitlines()[-1] if out.strip() else "" for out in outputs],
    }


def cron_child(args, db_url, sink_port, name):
    """One dbmail_cron in a child that measures itself; (peak RSS MB, RSS after start-up MB, seconds)."""
    proc = subprocess.run(
        [PY, *profiled(args, name), str(BENCH / "cron_child.py")],
        env=child_env(db_url, sink_port),
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: dbmail_cron failed (exit {proc.returncode}):\n{proc.stdout}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures["peak_rss_kb"] / 1024, figures["baseline_rss_kb"] / 1024, figures["seconds"]


def big_body(megabytes):
    """About `megabytes` MB of plain text in lines of 72 characters (as a long report would be)."""
    line = "The quarterly figures, department by department, with the notes of each. "[:71] + "\n"
    return line * int(megabytes * 1024 * 1024 / len(line))


def memory_main(args, db_url, step):
    from django.db import connection

    from dbmail.intake.outbox import enqueue
    from dbmail.models import SenderAccount

    n = max(1, int(10_000 * args.memory_scale))
    big = max(n + 1, int(100_000 * args.memory_scale))
    workdir = Path(tempfile.mkdtemp(prefix="mailsite-bench-"))
    rows = []
    try:
        sender = SenderAccount.objects.create(address="office@example.org", display_name="The Office")
        step(f"queuing {args.big_emails} ad-hoc emails of {args.big_email_mb:g} MB")
        body = big_body(args.big_email_mb)
        for i in range(args.big_emails):
            enqueue(to=f"reader{i}@example.net", subject=f"Report {i}", text=body, from_email=sender.address)
        del body
        step("dbmail_cron sending them")
        sink = Sink(workdir, "memory-big")
        peak_big, start_big, seconds = cron_child(args, db_url, sink.port, "memory-big")
        report = sink.stop()
        if report["messages"] != args.big_emails:
            raise SystemExit(f"bench: the sink got {report['messages']} of {args.big_emails} big emails")
        rows.append(("big", args.big_emails, peak_big, start_big, seconds))

        for count, start in ((n, 0), (big, n)):
            step(f"creating {count - start:,} users; dbmail_cron expanding and sending a request to {count:,}")
            create_users(start, count - start)
            create_request(sender)
            sink = Sink(workdir, f"memory-{count}")
            peak, at_start, seconds = cron_child(args, db_url, sink.port, f"memory-{count}")
            report = sink.stop()
            if report["messages"] != count:
                raise SystemExit(f"bench: the sink got {report['messages']} of {count} emails")
            rows.append(("request", count, peak, at_start, seconds))
    finally:
        for proc in Sink.running:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        connection.close()
        if not args.keep_db:
            drop_database(db_url)

    (_, _, peak_big, start_big, _), (_, _, peak_n, _, _), (_, _, peak_many, _, _) = rows
    results = {
        "big_emails": args.big_emails,
        "big_email_mb": args.big_email_mb,
        "rss_mb_big_emails": round(peak_big, 1),
        "rss_mb_at_start": round(start_big, 1),
        f"rss_mb_expand_send_{n}": round(peak_n, 1),
        f"rss_mb_expand_send_{big}": round(peak_many, 1),
        "seconds": {f"{kind}-{count}": round(sec, 1) for kind, count, _, _, sec in rows},
    }
    path = BENCH / "memory.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    over = peak_big - start_big
    growth = peak_many - peak_n
    print_table(
        [
            (
                f"peak RSS, {args.big_emails} emails of {args.big_email_mb:g} MB",
                f"{peak_big:.1f} MB",
                f"<= start ({start_big:.1f} MB) + {MEMORY_TARGET_OVER_START_MB} MB ({over:+.1f})  "
                f"{verdict(over <= MEMORY_TARGET_OVER_START_MB)}",
            ),
            (f"peak RSS, expand + send {n:,}", f"{peak_n:.1f} MB", ""),
            (
                f"peak RSS, expand + send {big:,}",
                f"{peak_many:.1f} MB",
                f"<= {n:,} + {TARGETS['rss_growth_mb']} MB ({growth:+.1f})  {verdict(growth <= TARGETS['rss_growth_mb'])}",
            ),
        ],
        [f"figures written to {path}"],
    )


# --- report -------------------------------------------------------------------------------------


def verdict(ok):
    return "ok" if ok else "MISSED"


def print_table(rows, notes):
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print()
    print(f"{'figure'.ljust(width)}  {'value'.rjust(vwidth)}  target")
    print(f"{'-' * width}  {'-' * vwidth}  {'-' * 24}")
    for label, value, target in rows:
        print(f"{label.ljust(width)}  {value.rjust(vwidth)}  {target}")
    print()
    for note in notes:
        print(note)


def main(argv=None):
    args = parse_args(argv)
    db_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    clock = time.perf_counter()

    def step(text):
        print(f"[{time.perf_counter() - clock:6.1f}s] {text}", flush=True)

    step(f"recreating {urlsplit(db_url).path.lstrip('/')} and migrating")
    recreate_database(db_url)
    subprocess.run([PY, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=child_env(db_url), check=True)
    os.environ.update(child_env(db_url))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection

    from dbmail.models import SenderAccount, TextOfEmail

    if args.memory:
        memory_main(args, db_url, step)
        return
    n, big = args.messages, args.big
    workdir = Path(tempfile.mkdtemp(prefix="mailsite-bench-"))  # the sinks' reports
    try:
        sender = SenderAccount.objects.create(address="office@example.org", display_name="The Office")
        step(f"creating {n:,} users")
        create_users(0, n)

        step(f"expanding a request to {n:,} recipients")
        small = create_request(sender)
        emails, seconds, rss_small = expand_phase(args, db_url, "expand-small")
        if emails != n:
            raise SystemExit(f"bench: expansion made {emails} emails, expected {n}")
        expand_small = emails / seconds

        step(f"building {n:,} messages as bytes for the ceiling")
        messages = prebuilt_messages(small)
        size = sum(len(m[2]) for m in messages) / len(messages)
        step("ceiling: plain smtplib, one connection")
        ceiling, ceiling_report = ceiling_phase(workdir, messages)
        del messages

        step(f"dbmail_cron sending {n:,}")
        single = send_phase(args, db_url, workdir, small, 1, "send")
        sent = small.emails.filter(status=TextOfEmail.Status.SENT).count()
        if sent != n:
            raise SystemExit(f"bench: {sent} of {n} emails are marked sent after the send phase")

        concurrent = []
        for procs in args.senders:
            step(f"{procs} dbmail_cron processes at once on {n:,} new emails")
            request = create_request(sender)
            expand_phase(args, db_url, f"expand-for-{procs}")
            concurrent.append((procs, send_phase(args, db_url, workdir, request, procs, f"send-{procs}")))

        step(f"creating {big - n:,} more users, expanding a request to {big:,}")
        create_users(n, big - n)
        create_request(sender)
        emails, seconds, rss_big = expand_phase(args, db_url, "expand-big")
        if emails != big:
            raise SystemExit(f"bench: expansion made {emails} emails, expected {big}")
        expand_big = emails / seconds
    finally:
        for proc in Sink.running:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        connection.close()
        if not args.keep_db:
            drop_database(db_url)

    results = {
        "ceiling_msgs_s": round(ceiling, 1),
        "send_msgs_s": round(single["msgs_s"], 1),
        "send_ratio": round(single["msgs_s"] / ceiling, 3),
        "expand_emails_s_10k": round(expand_small, 1),
        "expand_emails_s_100k": round(expand_big, 1),
        "rss_mb_10k": round(rss_small, 1),
        "rss_mb_100k": round(rss_big, 1),
        "senders": [
            {"n": procs, "msgs_s": round(r["msgs_s"], 1), "duplicates": r["duplicates"], "missing": r["missing"]}
            for procs, r in concurrent
        ],
    }
    bench_results.update(args.results, results)  # other benchmarks' keys (gate_worst, dkim) stay

    ratio = results["send_ratio"]
    growth = rss_big - rss_small
    rows = [
        ("ceiling: smtplib, 1 connection", f"{ceiling:,.0f} msg/s", "(reference)"),
        (f"dbmail_cron send, {n:,} (incl. start-up)", f"{single['msgs_s']:,.0f} msg/s", ""),
        ("send / ceiling", f"{ratio:.2f}", f">= {TARGETS['send_ratio']}  {verdict(ratio >= TARGETS['send_ratio'])}"),
        (
            f"expansion, {n:,} recipients",
            f"{expand_small:,.0f} emails/s",
            f">= {TARGETS['expand_emails_s']:,}  {verdict(expand_small >= TARGETS['expand_emails_s'])}",
        ),
        (
            f"expansion, {big:,} recipients",
            f"{expand_big:,.0f} emails/s",
            f">= {TARGETS['expand_emails_s']:,}  {verdict(expand_big >= TARGETS['expand_emails_s'])}",
        ),
        (f"peak RSS, expanding {n:,}", f"{rss_small:.1f} MB", ""),
        (
            f"peak RSS, expanding {big:,}",
            f"{rss_big:.1f} MB",
            f"<= {n:,} + {TARGETS['rss_growth_mb']} MB ({growth:+.1f})  {verdict(growth <= TARGETS['rss_growth_mb'])}",
        ),
    ]
    for procs, r in concurrent:
        clean = r["duplicates"] == 0 and r["missing"] == 0 and r["unexpected"] == 0
        rows.append(
            (
                f"{procs} senders at once, {n:,}",
                f"{r['msgs_s']:,.0f} msg/s",
                f"dup {r['duplicates']}, missing {r['missing']}  {verdict(clean)}",
            )
        )
    load_after = os.getloadavg()
    notes = [
        f"message size {size:,.0f} bytes; sink CPU per message: ceiling "
        f"{ceiling_report['cpu_seconds'] / n * 1e6:.0f} us, dbmail_cron {single['sink_cpu_us']:.0f} us",
        f"1 sender: {single['summaries'][0]}",
        *(f"{procs} senders: " + " | ".join(r["summaries"]) for procs, r in concurrent),
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs); "
        f"total {time.perf_counter() - clock:.0f}s",
        f"figures written to {args.results}",
    ]
    if args.profile:
        notes.append(f"profiles in {args.profile} (cProfile slows the children: do not compare these figures)")
    print_table(rows, notes)


if __name__ == "__main__":
    main()
