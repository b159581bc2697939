"""Memory only (bench/run.py --memory): the peak RSS of one dbmail_cron child, written to bench/memory.json.

- 20 ad-hoc emails of 10 MB (--big-emails, --big-email-mb) queued with enqueue(), then sent to the sink:
  the peak, and the RSS right after Django's start-up;
- a request to 10,000 and then to 100,000 users (both times --memory-scale), expanded and sent by one run.

Each child measures itself (bench/cron_child.py): VmHWM from /proc/self/status.
"""

import json

from bench import db

# Body bytes a sender may hold (DBMAIL_BATCH_MAX_BYTES, default 20 MB) plus the message being built and
# written (a few copies of one body) above Django's own size.
MEMORY_TARGET_OVER_START_MB = 120


def cron_child(b, sink_port, name):
    """One dbmail_cron in a child that measures itself; (peak RSS MB, RSS after start-up MB, seconds)."""
    figures = b.child("cron_child.py", name=name, env=b.env(sink_port))
    return figures["peak_rss_kb"] / 1024, figures["baseline_rss_kb"] / 1024, figures["seconds"]


def big_body(megabytes):
    """About `megabytes` MB of plain text in lines of 72 characters (as a long report would be)."""
    line = "The quarterly figures, department by department, with the notes of each. "[:71] + "\n"
    return line * int(megabytes * 1024 * 1024 / len(line))


def run(b):
    from bench.run import BENCH, SENDER, TARGETS, Sink, create_request, print_table, set_active_users, verdict
    from dbmail.intake.outbox import enqueue

    args = b.args
    n = max(1, int(10_000 * args.memory_scale))
    big = max(n + 1, int(100_000 * args.memory_scale))
    rows = []
    set_active_users(b, 0)
    b.step(f"queuing {args.big_emails} ad-hoc emails of {args.big_email_mb:g} MB")
    body = big_body(args.big_email_mb)
    for i in range(args.big_emails):
        enqueue(to=f"reader{i}@example.net", subject=f"Report {i}", text=body, from_email=SENDER)
    del body
    b.step("dbmail_cron sending them")
    sink = Sink(b.workdir, "memory-big")
    peak_big, start_big, seconds = cron_child(b, sink.port, "memory-big")
    report = sink.stop()
    if report["messages"] != args.big_emails:
        raise SystemExit(f"bench: the sink got {report['messages']} of {args.big_emails} big emails")
    rows.append(("big", args.big_emails, peak_big, start_big, seconds))

    for count in (n, big):
        b.step(f"dbmail_cron expanding and sending a request to {count:,}")
        set_active_users(b, count)
        db.reset_emails(b.conn)
        create_request()
        sink = Sink(b.workdir, f"memory-{count}")
        peak, at_start, seconds = cron_child(b, sink.port, f"memory-{count}")
        report = sink.stop()
        if report["messages"] != count:
            raise SystemExit(f"bench: the sink got {report['messages']} of {count} emails")
        rows.append(("request", count, peak, at_start, seconds))

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
