"""The gate's worst inputs: one command, a table on stdout, the figures in bench/results.json ("gate_worst").

    python bench/gate_worst.py                 # every shape at MAILGATE_MAX_BYTES (25 MB by default)
    python bench/gate_worst.py --size 2000000  # smaller shapes: a quick run
    python bench/gate_worst.py --only to_header parts

Each shape is written to a file and piped, as an MTA would, into its own
child process (bench/gate_child.py: mailgate/pipe.py's own entry, timed),
against a freshly migrated PostgreSQL database BENCH_GATE_DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/mailsite_bench_gate), dropped at
the end. The list it is sent to lets anyone post and has one member, so a
message that is not a bounce is parsed, routed, checked and forwarded (the
copy is queued, not sent). Bounce shapes go to a signed VERP address.

Per shape: its size, the gate's exit code and the stored status, the seconds
spent in the gate (Django's start-up left out; it is printed once), and the
child's peak RSS (VmHWM, Django included). tests/test_attack_gate_cost.py
runs the same shapes, smaller, in the suite; the shape builders are here.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench import results as bench_results  # noqa: E402
from bench.run import child_env, drop_database, recreate_database  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/mailsite_bench_gate"
LIST = "worst@lists.example.org"
HEAD = b"From: Ann <ann@example.com>\r\nSubject: worst case\r\nMessage-ID: <worst@example.com>\r\n"


# --- the shapes: each takes a target size in bytes and returns a message about that big ------------


def to_header(size):
    """One To field listing addresses, folded: the address-list parser's quadratic case (issue 12: 2 MB, 134 s)."""
    n = max(1, size // 25)
    return HEAD + b"To: " + b",\r\n ".join(b"user%07d@example.com" % i for i in range(n)) + b"\r\n\r\nhello\r\n"


def to_one_line(size):
    """The same list on one line (past RFC 5322's 998, as real spam has it)."""
    n = max(1, size // 23)
    return HEAD + b"To: " + b", ".join(b"user%07d@example.com" % i for i in range(n)) + b"\r\n\r\nhello\r\n"


def header_fields(size):
    """As many short header fields as fit."""
    n = max(1, size // 16)
    return HEAD + b"".join(b"X-F%09d: v\r\n" % i for i in range(n)) + b"\r\nhello\r\n"


def encoded_subject(size):
    """A subject of RFC 2047 encoded words (the modern parser's memory hog: 2 MB took 760 MB)."""
    word = b"=?utf-8?q?=C3=A9t=C3=A9?= "
    return b"From: ann@example.com\r\nSubject: " + word * max(1, size // len(word)) + b"\r\n\r\nhello\r\n"


def address_comments(size):
    """A From of nested comments: the address parsers recurse on them."""
    return b"From: " + b"(" * max(1, size - 40) + b"\r\nSubject: c\r\n\r\nhello\r\n"


def content_type_params(size):
    """A Content-Type with many parameters: parameter parsing is quadratic."""
    n = max(1, size // 12)
    params = b"".join(b"; p%07d=v" % i for i in range(n))
    return (
        HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b" + params + b"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
    )


def parts(size):
    """Tiny MIME parts, as many as fit (the issue asks for 100,000 at least)."""
    part = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
    n = max(1, size // len(part))
    return HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + part * n + b"--b--\r\n"


def nesting(size):
    """Multiparts inside multiparts, as deep as fits."""
    n = max(1, size // 70)
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(n))
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(n)))
    return HEAD + b"MIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nleaf" + closing + b"\r\n"


def attached_messages(size):
    """message/rfc822 inside message/rfc822, as deep as fits."""
    n = max(1, size // 50)
    inner = b"".join(b"Content-Type: message/rfc822\r\n\r\nSubject: %d\r\n" % i for i in range(n))
    return HEAD + b"MIME-Version: 1.0\r\n" + inner + b"Content-Type: text/plain\r\n\r\nleaf\r\n"


def long_line(size):
    """One line as long as the message (the issue asks for 10 MB)."""
    return HEAD + b"\r\n" + b"x" * max(1, size - len(HEAD) - 4) + b"\r\n"


def empty_lines(size):
    """Nothing but line ends: every one is a line object in the email parser."""
    return HEAD + b"\r\n" + b"\n" * max(1, size - len(HEAD) - 2)


def dsn_recipients(size):
    """A delivery report with one recipient block after another (each a message object to the parser)."""
    block = b"Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
    n = max(1, size // len(block))
    return (
        b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        + block * n
        + b"--r--\r\n"
    )


def big_bounce(size):
    """A real-looking DSN returning a big original (the heuristic detectors read every line)."""
    lines = b"".join(b"%070d\r\n" % i for i in range(max(1, size // 72)))
    return (
        b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n"
        b"--r\r\nContent-Type: text/plain\r\n\r\n<bob@example.net>: host said: 550 5.1.1 no such user\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--r\r\nContent-Type: message/rfc822\r\n\r\nSubject: the original\r\nFrom: x@example.org\r\n\r\n"
        + lines
        + b"--r--\r\n"
    )


SHAPES = {
    "to_header": to_header,
    "to_one_line": to_one_line,
    "header_fields": header_fields,
    "encoded_subject": encoded_subject,
    "address_comments": address_comments,
    "content_type_params": content_type_params,
    "parts": parts,
    "nesting": nesting,
    "attached_messages": attached_messages,
    "long_line": long_line,
    "empty_lines": empty_lines,
    "dsn_recipients": dsn_recipients,
    "big_bounce": big_bounce,
}
BOUNCES = {"dsn_recipients", "big_bounce"}
# The sizes the issue names, where smaller than the limit: 2 MB of To (the reported case), 10 MB of line.
ISSUE_SIZES = {"to_header": [2_000_000], "long_line": [10_000_000]}


def build(name, size):
    """Shape `name` at most `size` bytes long (the builders aim at it; this trims their overshoot)."""
    raw = SHAPES[name](size)
    while len(raw) > size:
        raw = SHAPES[name](int(size * size / len(raw)) - 256)
    return raw


def parse_args(argv):
    parser = argparse.ArgumentParser(description="mailgate worst-case inputs")
    parser.add_argument("--size", type=int, help="bytes per shape (default: MAILGATE_MAX_BYTES, 25 MB)")
    parser.add_argument("--only", nargs="+", choices=sorted(SHAPES), help="these shapes only")
    parser.add_argument("--results", default=str(BENCH / "results.json"))
    return parser.parse_args(argv)


def setup(env):
    """Migrate, then make the list and the email a VERP address names; returns the VERP address."""
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env, check=True)
    os.environ.update(env)
    import django

    django.setup()
    from dbmail.content import verp
    from dbmail.models import TextOfEmail
    from mailgate.models import EmailList

    EmailList.objects.create(name="Worst", regex="worst", addresses="member@example.net", posting_policy="anyone")
    email = TextOfEmail.objects.create(
        to_address="bob@example.net", from_header="office@example.org", message_id="<sent@example.org>", status="sent"
    )
    from django.db import connection

    connection.close()
    return verp.envelope_sender(email.message_id, "office@example.org")


def run_shape(name, size, workdir, env, verp_address):
    raw = build(name, size)
    path = Path(workdir) / f"{name}.eml"
    path.write_bytes(raw)
    del raw
    recipient, sender = (verp_address, "") if name in BOUNCES else (LIST, "ann@example.com")
    with path.open("rb") as stdin:
        proc = subprocess.run(
            [sys.executable, str(BENCH / "gate_child.py"), "--recipient", recipient, "--sender", sender],
            stdin=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report.update(shape=name, bytes=path.stat().st_size, traceback="Traceback" in proc.stderr)
    path.unlink()
    return report


def main(argv=None):
    args = parse_args(argv)
    db_url = os.environ.get("BENCH_GATE_DATABASE_URL", DEFAULT_DB)
    env = child_env(db_url)
    env.update(DBMAIL_VERP_DOMAIN="lists.example.org", MAILGATE_SEND_NOW_MAX="0")
    size = args.size or int(env.get("MAILGATE_MAX_BYTES") or 25 * 1024 * 1024)
    runs = []
    for name in args.only or SHAPES:
        runs += [(name, s) for s in ISSUE_SIZES.get(name, []) if s < size and not args.size]
        runs.append((name, size - 4096))  # just under the limit, so it is processed, not refused as too big
    print(f"gate_worst: {len(runs)} runs, database {db_url}", file=sys.stderr)
    recreate_database(db_url)
    rows = []
    try:
        verp_address = setup(env)
        with tempfile.TemporaryDirectory(prefix="gate-worst-") as workdir:
            for name, shape_size in runs:
                print(f"  {name} ({shape_size:,} bytes)...", file=sys.stderr, flush=True)
                rows.append(run_shape(name, shape_size, workdir, env, verp_address))
    finally:
        from django.db import connection

        connection.close()
        drop_database(db_url)

    print(f"\n{'shape':<20} {'bytes':>12} {'exit':>4} {'status':<10} {'gate s':>7} {'peak RSS MB':>11}  note")
    for row in rows:
        note = "TRACEBACK on stderr" if row["traceback"] else row["note"][:60]
        print(
            f"{row['shape']:<20} {row['bytes']:>12,} {row['code']:>4} {row['status']:<10} "
            f"{row['seconds']:>7.2f} {row['peak_rss_kb'] / 1024:>11.1f}  {note}"
        )
    startup = max(row["startup_seconds"] for row in rows)
    print(
        f"\nDjango start-up per child (not in 'gate s'): up to {startup:.2f} s; load average {os.getloadavg()[0]:.2f}"
    )
    figures = {
        "limit_bytes": size,
        "max_seconds": round(max(r["seconds"] for r in rows), 2),
        "max_peak_rss_mb": round(max(r["peak_rss_kb"] for r in rows) / 1024, 1),
        "tracebacks": sum(r["traceback"] for r in rows),
        "shapes": [
            {
                "shape": r["shape"],
                "bytes": r["bytes"],
                "exit": r["code"],
                "status": r["status"],
                "seconds": round(r["seconds"], 3),
                "peak_rss_mb": round(r["peak_rss_kb"] / 1024, 1),
            }
            for r in rows
        ],
    }
    bench_results.update(args.results, {"gate_worst": figures})
    return 1 if figures["tracebacks"] else 0


if __name__ == "__main__":
    sys.exit(main())
