"""The history phase: does sending cost the same with millions of finished emails in the table?

H finished emails (default 10,000,000) are bulk-loaded with generate_series,
as a year of sending would leave them: requests of 10,000, mostly sent, some
delivered, bounced or dropped, their status changes spread over 365 days,
the oldest first. Their text is short (the size of a row does not change
which index entries a claim reads); the PURGE_ROWS oldest also have their
delivery-log row, for the purge to delete. Loading drops the table's two
unique indexes and re-creates them afterwards, and skips the foreign-key
triggers, which is what makes ten million rows take minutes and not an hour;
VACUUM ANALYZE follows, as autovacuum would.

Then, with N due emails among them, the claim latency (every due email
claimed once, a batch at a time, then given back) and dbmail_cron's send
rate, each compared with the same figures on the empty table (phase send).
Last, dbmail_purge removes the PURGE_ROWS oldest emails while a sender sends
N new ones: the purge's rate, and the sender's claims and rate beside it.
"""

import subprocess
import time
from datetime import timedelta

from bench import db, stats

# The finished emails' statuses (dbmail.states' values), a year of sending's mix.
STATUSES = ["sent"] * 85 + ["delivered"] * 10 + ["bounced"] * 3 + ["dropped"] * 2
REQUEST_SIZE = 10_000
LOAD_CHUNK = 1_000_000
SPAN_SECONDS = 365 * 86400


def other_email_columns(given):
    """(", col, ...", ", %s, ...", [default, ...]): the email table's columns a bulk load does not give,
    with their model defaults, so that a column added later (NOT NULL, with a default) loads too."""
    from django.db import connection

    from dbmail.models import TextOfEmail

    others = [f for f in TextOfEmail._meta.concrete_fields if not f.primary_key and f.attname not in given]
    defaults = [f.get_db_prep_save(f.get_default(), connection) for f in others]
    return "".join(f", {f.column}" for f in others), "".join(", %s" for _ in others), defaults


def load(b, rows, purge_rows):
    """Bulk-load `rows` finished emails; returns the seconds it took (indexes and VACUUM ANALYZE included)."""
    from django.utils import timezone

    from dbmail import states
    from dbmail.models import MessageRequest, SenderAccount

    started = time.perf_counter()
    account = SenderAccount.objects.order_by("pk").first()
    requests = -(-rows // REQUEST_SIZE)
    now = timezone.now()
    made = MessageRequest.objects.bulk_create(
        MessageRequest(
            sender=account,
            subject=f"Old news {i}",
            text_body="Old letter.",
            recipient_set="all_active",
            created_at=now - timedelta(seconds=SPAN_SECONDS * (1 - i / requests)),
            send_at=now - timedelta(seconds=SPAN_SECONDS * (1 - i / requests)),
            status=states.RequestStatus.EXPANDED,
            recipient_count=REQUEST_SIZE,
        )
        for i in range(requests)
    )
    first_request = min(r.pk for r in made)
    # The columns given below; every other one gets its model default (the schema grows).
    given = {
        "to_address", "to_name", "from_header", "envelope_sender", "reply_to", "subject", "text", "html",
        "headers", "message_id", "status", "status_changed_at", "attempts", "next_attempt_at", "last_error",
        "created_at", "account_id", "request_id", "user_id", "sent_at",
    }  # fmt: skip
    other_columns, other_values, defaults = other_email_columns(given)
    with b.conn.cursor() as cur:
        cur.execute("ALTER TABLE dbmail_textofemail DROP CONSTRAINT dbmail_message_id_unique")
        cur.execute("DROP INDEX dbmail_one_email_per_address")
        cur.execute("SET session_replication_role = replica")  # no foreign-key triggers for the load
        step = SPAN_SECONDS / rows
        for low in range(1, rows + 1, LOAD_CHUNK):
            high = min(rows, low + LOAD_CHUNK - 1)
            cur.execute(
                f"""
                INSERT INTO dbmail_textofemail (to_address, to_name, from_header, envelope_sender, reply_to, subject,
                    text, html, headers, message_id, status, status_changed_at, attempts, next_attempt_at,
                    last_error, created_at, account_id, request_id, user_id, sent_at{other_columns})
                SELECT 'reader' || (g %% %s) || '@example.net', '', 'The Office <office@example.org>',
                       'office@example.org', '', 'Old news', 'An old letter, long since read. ', '', '{{}}',
                       '<' || g || '.history@example.org>', (%s::text[])[g %% 100 + 1],
                       t.at, 1, t.at, '', t.at, %s, %s + (g - 1) / %s, NULL, t.at{other_values}
                  FROM generate_series(%s, %s) AS g,
                       LATERAL (SELECT now() - interval '1 second' * (%s - g * %s)) AS t (at)
                """,
                [
                    REQUEST_SIZE,
                    STATUSES,
                    account.pk,
                    first_request,
                    REQUEST_SIZE,
                    *defaults,
                    low,
                    high,
                    SPAN_SECONDS,
                    step,
                ],
            )
            b.step(f"  history: {high:,} of {rows:,} emails loaded")
        cur.execute(
            """
            INSERT INTO dbmail_deliveryevent (email_id, at, kind, outcome, smtp_code, text)
            SELECT id, status_changed_at, 'attempt', 'sent', 250, '2.0.0 Ok: queued'
              FROM dbmail_textofemail ORDER BY id LIMIT %s
            """,
            [purge_rows],
        )
        cur.execute("SET session_replication_role = origin")
        cur.execute("ALTER TABLE dbmail_textofemail ADD CONSTRAINT dbmail_message_id_unique UNIQUE (message_id)")
        cur.execute(
            "CREATE UNIQUE INDEX dbmail_one_email_per_address ON dbmail_textofemail "
            "(request_id, lower(to_address::text)) WHERE request_id IS NOT NULL"
        )
    b.step("  history: indexes built; VACUUM ANALYZE")
    db.analyze(b.conn, "dbmail_textofemail", "dbmail_deliveryevent", "dbmail_messagerequest")
    return time.perf_counter() - started


def purge_age(b, purge_rows):
    """`--older-than` (in seconds) that selects the `purge_rows` oldest finished emails."""
    with b.conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM now() - status_changed_at) FROM dbmail_textofemail "
            "WHERE status_changed_at IS NOT NULL ORDER BY id OFFSET %s LIMIT 1",
            [purge_rows],
        )
        return int(cur.fetchone()[0])


def run(b):
    from bench.run import TARGETS, claim_latencies, expand_fresh, send_phase, set_active_users, verdict

    n, h, reps = b.args.messages, b.args.history, b.args.reps
    purge_rows = min(b.args.purge_rows, h)
    set_active_users(b, n)
    db.reset_emails(b.conn)
    b.step(f"history: bulk-loading {h:,} finished emails")
    seconds = load(b, h, purge_rows)
    out = b.results.setdefault("history", {})
    out.update(rows=h, load_seconds=round(seconds, 1))
    size = db.count(b.conn, "SELECT pg_total_relation_size('dbmail_textofemail')")
    out["table_mb"] = round(size / 1e6)

    rates, claim_ms = [], []
    for rep in range(reps):
        b.step(f"history: expanding {n:,} due emails among {h:,}, then sending them, repetition {rep + 1}/{reps}")
        request, _, _ = expand_fresh(b, f"expand-history-{rep}", n, reset=False)
        claim_ms += claim_latencies(b, f"claims-history-{rep}")
        result = send_phase(b, request, 1, f"send-history-{rep}")
        if result["missing"] or result["duplicates"]:
            raise SystemExit(f"bench: the history send missed {result['missing']}, duplicated {result['duplicates']}")
        rates.append(result["msgs_s"])
    claims = out["claim_ms_history"] = stats.summary(claim_ms, 2)
    out["send_msgs_s_history"] = stats.summary(rates)

    age = purge_age(b, purge_rows)
    b.step(f"history: dbmail_purge --older-than {age}s ({purge_rows:,} emails) while dbmail_cron sends {n:,}")
    request, _, _ = expand_fresh(b, "expand-purge", n, reset=False)
    started = time.perf_counter()
    purge = subprocess.Popen(
        b.manage_command("purge", "dbmail_purge", "--older-than", f"{age}s"),
        env=b.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)  # the purge has started deleting
    during_claims = stats.summary(claim_latencies(b, "claims-purge", settle=False), 2)
    during = send_phase(b, request, 1, "send-purge")
    overlapped = purge.poll() is None
    output = purge.communicate()[0]
    purge_seconds = time.perf_counter() - started
    if purge.returncode != 0:
        raise SystemExit(f"bench: dbmail_purge failed:\n{output}")
    removed = int(output.split("removed ")[1].split()[0]) if "removed " in output else 0
    out.update(
        purge_rows=removed,
        purge_rows_s=round(removed / purge_seconds, 1),
        purge_seconds=round(purge_seconds, 1),
        claim_ms_during_purge=during_claims,
        send_msgs_s_during_purge=round(during["msgs_s"], 1),
        purge_outlasted_send=overlapped,
    )
    if during["missing"] or during["duplicates"]:
        raise SystemExit("bench: the send beside the purge missed or duplicated emails")

    empty_claims = out.get("claim_ms_empty")
    empty_send = b.results.get("send_msgs_s")
    drift_target = TARGETS["history_drift"]
    claim_note = send_note = ""
    if empty_claims:
        drift = claims["median"] / empty_claims["median"] - 1
        out["claim_drift"] = round(drift, 3)
        claim_note = f"empty {empty_claims['median']:.2f} ms: {drift:+.0%}  {verdict(drift <= drift_target)}"
    if empty_send:
        drift = 1 - out["send_msgs_s_history"]["median"] / empty_send
        out["send_drift"] = round(drift, 3)
        send_note = f"empty {empty_send:,.0f}: {-drift:+.0%}  {verdict(drift <= drift_target)}"
    b.row(f"claim of a batch among {h:,} finished", stats.shown(claims, " ms", ".2f"), claim_note)
    b.row(f"dbmail_cron sending {n:,} among {h:,}", stats.shown(out["send_msgs_s_history"], " msg/s"), send_note)
    b.row(
        f"dbmail_purge of {removed:,} (beside a sender)",
        f"{removed / purge_seconds:,.0f} rows/s",
        f"{purge_seconds:.0f} s{'' if overlapped else ' (ended before the send)'}",
    )
    b.row(
        "  beside the purge: claim / send",
        f"{during_claims['median']:.2f} ms / {during['msgs_s']:,.0f} msg/s",
        f"claim max {during_claims['max']:.1f} ms",
    )
    b.notes.append(f"history: {h:,} emails, {out['table_mb']:,} MB with indexes, loaded in {seconds:.0f} s")
