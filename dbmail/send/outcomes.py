"""Recording what the server said about each email: one status change and one log row.

dbmail.send.dbworker decides when these writes happen (right after the answer,
on the sender's database thread where there is one).
"""

import logging
from typing import NamedTuple

from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from dbmail import rollup, states
from dbmail.conf import settings as conf
from dbmail.models import DeliveryEvent, TextOfEmail
from dbmail.send import retry

log = logging.getLogger(__name__)
Status = states.EmailStatus
# What the log row says when the claim was lost before the outcome was written (nothing changed).
LOST_LEASE = "lost-lease"
# Every outcome moves a row out of the claim's state; the claim token alone would not say so.
_FROM = sorted({source for transition in states.OUTCOMES.values() for source in transition.sources})


class Row(NamedTuple):
    """One outcome as written: the email's new state and its log line.

    A named tuple: one is made for every message sent, and the writer takes its columns with zip.
    """

    pk: int
    token: object
    status: str
    at: object
    last_error: str
    sent_at: object
    next_attempt_at: object
    smtp_code: int | None
    text: str
    counted: bool = True  # False: not the recipient's fault, the claim's attempt is taken back
    possibly_delivered: bool = False


NOT_COUNTED = " (not counted as an attempt: the server's or the sender's fault, not the recipient's)"


def as_row(email, token, outcome, now=None):
    """The row for an outcome, after the email's attempt budget is applied."""
    now = now or timezone.now()
    outcome = retry.give_up(outcome, email.attempts, email)
    sent = outcome.status == Status.SENT
    # The claim counted this attempt; a session fault gives it back, and waits as the last one did.
    attempts = email.attempts if outcome.counted else email.attempts - 1
    text = outcome.text if outcome.counted else outcome.text + NOT_COUNTED
    return Row(
        pk=email.pk,
        token=token,
        status=outcome.status,
        at=now,
        last_error="" if sent else text[:2000],
        sent_at=now if sent else None,
        next_attempt_at=now + retry.backoff(attempts, email) if outcome.status == Status.DEFERRED else None,
        smtp_code=outcome.code,
        text=text[:2000],
        counted=outcome.counted,
        possibly_delivered=outcome.possibly_delivered,
    )


def write(rows):
    """Commit `rows` together; returns the pks whose claim was lost (nothing changed for them)."""
    lost = (_write_postgresql if db_connection.vendor == "postgresql" else _write_portable)(rows)
    for pk in lost:
        log.warning("email %s: lease lost before its outcome was recorded", pk)
    return lost


def record(email, token, outcome, now=None):
    """Commit one outcome; return it as applied (a deferral past the budget becomes a drop)."""
    row = as_row(email, token, outcome, now)
    write([row])
    return retry.give_up(outcome, email.attempts, email)


def _write_portable(rows):
    lost, held_rows = [], []
    with transaction.atomic():
        for row in rows:
            changes = {"status": row.status, "status_changed_at": row.at, "last_error": row.last_error}
            changes.update({k: getattr(row, k) for k in ("sent_at", "next_attempt_at") if getattr(row, k)})
            if not row.counted:
                changes["attempts"] = F("attempts") - 1
            if row.possibly_delivered:
                changes["possibly_delivered"] = F("possibly_delivered") + 1
            held = TextOfEmail.objects.filter(pk=row.pk, claim_token=row.token, status__in=_FROM).update(
                claim_token=None, leased_until=None, **changes
            )
            if not held and not TextOfEmail.objects.filter(pk=row.pk).exists():
                lost.append(row.pk)  # deleted meanwhile: no log row naming nothing (see _PREPARE_SQL)
                continue
            DeliveryEvent.objects.create(
                email_id=row.pk,
                at=row.at,
                kind=DeliveryEvent.Kind.ATTEMPT,
                outcome=row.status if held else LOST_LEASE,
                smtp_code=row.smtp_code,
                text=row.text,
            )
            if held:
                held_rows.append(row)
            else:
                lost.append(row.pk)
        # Counted for the dashboard in the same transaction as the outcomes.
        owners = TextOfEmail.objects.filter(pk__in=[r.pk for r in held_rows]).values_list(
            "pk", "account_id", "request_id"
        )
        owner = {pk: (account_id, request_id) for pk, account_id, request_id in owners}
        rollup.count((rollup.day_of(r.at), *owner[r.pk], r.status) for r in held_rows)
    return lost


# One prepared statement, one round trip and one commit for any number of outcomes: this
# runs for every message sent, and planning it each time would cost more than running it.
# The status test is wrapped in IS TRUE so the planner cannot match it to the partial index of
# rows being sent (dbmail_lease): statistics gathered while few rows were "sending" (the usual
# case) would make it walk every row being sent for each outcome instead of looking up its id.
# A claim lost because its email was deleted meanwhile (its request deleted while being sent) leaves
# no log row: the log's email has no database constraint (migration 0021) to refuse one naming nothing.
# With DBMAIL_ASYNC_COMMIT the commit does not wait for the WAL flush: a crash of the sender
# loses nothing, and only a crash of the PostgreSQL server itself can forget the last
# fraction of a second of outcomes, whose emails are then sent again after their lease.
_PREPARE_SQL = f"""
PREPARE dbmail_write_outcomes (bigint[], uuid[], text[], timestamptz[], text[], timestamptz[],
                               timestamptz[], smallint[], text[], boolean[], boolean[], date[]) AS
WITH outcome AS (
    SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        AS o (pk, token, status, at, last_error, sent_at, next_attempt_at, smtp_code, text, attempt_counts,
              unknown, day)
),
updated AS (
    UPDATE dbmail_textofemail AS e
       SET status = o.status, status_changed_at = o.at, claim_token = NULL, leased_until = NULL,
           last_error = o.last_error, sent_at = COALESCE(o.sent_at, e.sent_at),
           next_attempt_at = COALESCE(o.next_attempt_at, e.next_attempt_at),
           attempts = e.attempts - CASE WHEN o.attempt_counts THEN 0 ELSE 1 END,
           possibly_delivered = e.possibly_delivered + CASE WHEN o.unknown THEN 1 ELSE 0 END
      FROM outcome AS o
     WHERE e.id = o.pk AND e.claim_token = o.token AND (e.status IN ({", ".join(f"'{s}'" for s in _FROM)})) IS TRUE
 RETURNING e.id, e.account_id, e.request_id, o.status, o.day
),
counted AS ({{count_sql}})
INSERT INTO dbmail_deliveryevent (email_id, at, kind, outcome, smtp_code, text)
SELECT o.pk, o.at, '{DeliveryEvent.Kind.ATTEMPT}', CASE WHEN u.id IS NULL THEN '{LOST_LEASE}' ELSE o.status END,
       o.smtp_code, o.text
  FROM outcome AS o LEFT JOIN updated AS u ON u.id = o.pk
 WHERE u.id IS NOT NULL OR EXISTS (SELECT FROM dbmail_textofemail AS x WHERE x.id = o.pk)
RETURNING email_id, outcome
"""
_EXECUTE_SQL = "{sync} EXECUTE dbmail_write_outcomes (%s, %s::uuid[], %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::date[])"


# Always the plan made once (a generic plan): by its cost estimates PostgreSQL would otherwise plan the
# statement again for every call of a few outcomes (a small group estimated cheaper that way), and
# planning it cost more than running it (docs/scaling.md#what-keeps-a-sender-fast).
_GENERIC = "SET LOCAL plan_cache_mode TO force_generic_plan;"


def _write_postgresql(rows):
    sync = _GENERIC + ("SET LOCAL synchronous_commit TO OFF;" if conf.DBMAIL_ASYNC_COMMIT else "")
    pks, tokens, statuses, ats, last_errors, sent_ats, next_ats, codes, texts, counted, unknown = map(
        list, zip(*rows, strict=True)
    )
    token_text = {token: str(token) for token in set(tokens)}  # a batch's outcomes share their claim's token
    first, last = rollup.day_of(min(ats)), rollup.day_of(max(ats))
    days = [first] * len(ats) if first == last else [rollup.day_of(at) for at in ats]
    columns = [_numbers(pks), _texts([token_text[t] for t in tokens]), _texts(statuses), _moments(ats)]
    columns += [_texts(last_errors), _moments(sent_ats), _moments(next_ats), _numbers(codes), _texts(texts)]
    columns += [_flags(counted), _flags(unknown), _moments(days)]
    db_connection.ensure_connection()
    session = db_connection.connection  # a prepared statement lives as long as this session
    with db_connection.cursor() as cursor:
        if getattr(db_connection, "dbmail_prepared_in", None) is not session:
            # The dashboard's counts (dbmail.rollup) are added by the same statement.
            cursor.execute(_PREPARE_SQL.format(count_sql=rollup.insert_sql("updated")))
            db_connection.dbmail_prepared_in = session
        cursor.execute(_EXECUTE_SQL.format(sync=sync), columns)
        held = {pk for pk, outcome in cursor.fetchall() if outcome != LOST_LEASE}
    return [pk for pk in pks if pk not in held]


# The outcome statement's arrays, as the text of PostgreSQL arrays ('{..}'), which the statement's
# parameter types read back. psycopg2 adapts a list element by element, about 1.5 µs each and 8 µs
# a timestamp, while holding the interpreter: for a window of outcomes that was most of the
# database thread's time. Each column is written by the function for its kind (asking each element
# what it is took as long as writing it): every element quoted (only backslash and double quote
# are special inside the quotes) but numbers and flags, NULL as NULL, moments in ISO 8601 with
# their offset.


def _numbers(values):
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


def _flags(values):
    return "{" + ",".join(["t" if v else "f" for v in values]) + "}"


def _moments(values):
    """Timestamps or dates (or None), quoted in ISO 8601 (a timestamp with its offset)."""
    items, last, text = [], None, "NULL"
    for value in values:
        if value is not last:  # a run of one value (the batch's day) is written once
            last, text = value, "NULL" if value is None else f'"{value.isoformat()}"'
        items.append(text)
    return "{" + ",".join(items) + "}"


def _texts(values):
    return "{" + ",".join([_quoted(v) for v in values]) + "}"


def _quoted(text):
    text = text if type(text) is str else str(text)  # a status may be one of the TextChoices
    if "\\" in text or '"' in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
