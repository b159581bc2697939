"""Pacing across senders: the rate each destination group got, with several dbmail_cron processes at once.

    python bench/pacing.py                 # about a minute: 3 senders for 40 s
    python bench/pacing.py --senders 4 --seconds 60

It recreates the PostgreSQL database BENCH_PACING_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/mailsite_pacing_bench), migrates it,
queues mail to four destination groups and starts --senders `dbmail_cron
--max-seconds S` processes at once against the scripted SMTP server of the
tests (tests/smtpserver.py, which timestamps what it keeps):

- gmail.com, paced at 120 a minute;
- outlook.com (microsoft), paced at 240 a minute, whose first answer is
  "421 4.7.0 try again later": it is halved (120), paused 30 s, then recovers;
- yahoo.com, paced at 60 a minute;
- example.net (the default group), no limit: it must go at full speed.

Every paced bucket starts empty, so what a group gets is its rate, not a
burst. Per group it prints what was received, the rate over the senders'
run (received / the run's wall time, after the first message) and the
configured rate, and writes them under the key "pacing" of
bench/results.json (other keys are kept). The database is dropped at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import child_env, fresh_database, measure_with_test_server  # noqa: E402

PY = sys.executable
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailsite_pacing_bench"
GROUPS = {
    "gmail": {"rate_per_minute": 120, "max_connections": 2},
    "microsoft": {"rate_per_minute": 240, "max_connections": 2},
    "yahoo": {"rate_per_minute": 60, "max_connections": 2},
}
QUEUED = {"gmail.com": 400, "outlook.com": 400, "yahoo.com": 200, "example.net": 3000}
GROUP_OF = {"gmail.com": "gmail", "outlook.com": "microsoft", "yahoo.com": "yahoo", "example.net": "default"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="pacing per destination group across senders")
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--keep-db", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    db_url = os.environ.get("BENCH_PACING_DATABASE_URL", DEFAULT_DB)
    fresh_database(db_url, child_env(db_url))
    os.environ["DBMAIL_DESTINATION_GROUPS"] = json.dumps(GROUPS)
    figures = measure_with_test_server(measure, args, db_url)
    write(args.results, figures)


def measure(args, db_url, server):
    from django.db import connection
    from django.utils import timezone

    from dbmail.content import rendering
    from dbmail.models import PacingBucket, SenderAccount, TextOfEmail
    from dbmail.send import backoff, destinations

    account = SenderAccount.objects.create(address="office@example.org")
    for domain, n in QUEUED.items():
        TextOfEmail.objects.bulk_create(
            TextOfEmail(
                account=account,
                to_address=f"r{i:05d}@{domain}",
                dest_group=destinations.group_of(f"x@{domain}"),
                from_header=account.address,
                envelope_sender=account.address,
                subject="pacing",
                text="hello\n",
                message_id=rendering.new_message_id(),
            )
            for i in range(n)
        )
    now = timezone.now()
    for name, spec in GROUPS.items():  # empty: what a group gets is its rate, not a burst
        PacingBucket.objects.create(name=name, tokens=0, refilled_at=now, configured_per_minute=spec["rate_per_minute"])
    server.script("@outlook.com", "421 4.7.0 try again later", "250")
    connection.close()

    env = child_env(db_url, server.port)
    env.update(DBMAIL_DESTINATION_GROUPS=json.dumps(GROUPS), DBMAIL_BATCH_SIZE="50", EMAIL_TIMEOUT="5")
    print(f"{args.senders} dbmail_cron --max-seconds {args.seconds:g} at once", flush=True)
    procs = [
        subprocess.Popen(
            [PY, str(ROOT / "manage.py"), "dbmail_cron", "--max-seconds", str(args.seconds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(args.senders)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=args.seconds + 120)
        if proc.returncode:
            raise SystemExit(f"dbmail_cron failed: {err.strip()}")
        for line in out.splitlines():
            print(f"  {line}")
    ended = time.time()

    times = defaultdict(list)
    for message in server.received:
        times[GROUP_OF[message.rcpt_tos[0].rpartition("@")[2]]].append(message.at)
    first = min(t for ts in times.values() for t in ts)
    window = ended - first
    slowed = {b.name: b for b in PacingBucket.objects.all()}
    figures = {"senders": args.senders, "seconds": args.seconds, "groups": {}}
    for group in GROUP_OF.values():
        got = sorted(times.get(group, []))
        configured = GROUPS.get(group, {}).get("rate_per_minute", 0)
        per_minute = 60 * len(got) / window if window else 0
        bucket = slowed.get(group)
        span = got[-1] - got[0] if len(got) > 1 else 0
        figures["groups"][group] = {
            "received": len(got),
            "per_minute": round(per_minute, 1),
            # While it had mail to send: the default group's figure is the senders' full speed.
            "msgs_s_while_sending": round((len(got) - 1) / span, 1) if span else None,
            "configured_per_minute": configured,
            "slowed_to_per_minute": round(backoff.effective_rate(bucket, timezone.now()), 1)
            if bucket is not None and backoff.is_slowed(bucket, timezone.now())
            else None,
            "pushbacks": bucket.pushbacks if bucket is not None else 0,
        }
    figures["window_seconds"] = round(window, 1)
    print_table(figures)
    return figures


def print_table(figures):
    print(f"\nper destination group over {figures['window_seconds']:.1f} s, {figures['senders']} senders:")
    print(f"  {'group':<10} {'received':>8} {'a minute':>9} {'configured':>11} {'msg/s sending':>14}  back-off")
    for group, row in figures["groups"].items():
        configured = f"{row['configured_per_minute']:g}" if row["configured_per_minute"] else "no limit"
        slowed = f"slowed to {row['slowed_to_per_minute']:g}" if row["slowed_to_per_minute"] else "-"
        if row["pushbacks"]:
            slowed += f" ({row['pushbacks']} pushback{'s' * (row['pushbacks'] != 1)})"
        speed = f"{row['msgs_s_while_sending']:.1f}" if row["msgs_s_while_sending"] else "-"
        print(f"  {group:<10} {row['received']:>8} {row['per_minute']:>9.1f} {configured:>11} {speed:>14}  {slowed}")


def write(path, figures):
    path = Path(path)
    results = json.loads(path.read_text()) if path.exists() else {}
    results["pacing"] = figures
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    partial.replace(path)  # the other keys stay as they were
    print(f"\nwritten: {path} (key 'pacing')")


if __name__ == "__main__":
    main()
