"""Outcomes counted per day, sender account and request: the comm panel dashboard's figures.

A leaf beside the models, like dbmail.states: written by the send path and by tracking,
merged by dbmail_cron, read by the panel (so the send path loads nothing of tracking for it).

Why a roll-up and how it is kept (docs/admins.md#dashboard has the reader's version):

- The dashboard sums DailyStat rows, a few per day, so its queries never touch the email
  table, however many millions of emails it holds (bench/dashboard.py measures it).
- Counting happens where an outcome is written, in the same transaction, so a count can
  neither be lost nor taken twice: dbmail.send.outcomes (sent, deferred, dropped, in its one
  raw-SQL statement on PostgreSQL) and dbmail.track.apply (delivered, bounced, complained,
  and dropped for a later rejection; and "hard_bounced", the bounced whose report was a hard
  bounce, each email once: the reputation guard's figure, dbmail.track.guard). A recount from the emails afterwards could not do this:
  the log's tracking events carry the MTA's clock, arrive late and repeat.
- Writers only ever INSERT a DailyStatDelta row (one per batch and key) into a table with no
  index but its key, never update a shared counter: any number of senders on any number of
  hosts never wait for each other's row lock, and counting costs a write one small insert.
- merge(), run by every dbmail_cron, folds the deltas into DailyStat's one row per key. A
  reader adds both tables, so its answer is the same before and after a merge.

A day counts what was recorded on it: "delivered" on the 3rd are the delivery reports applied
on the 3rd, whatever day the emails were sent. Unsubscribes come from the suppression list
(reason "unsubscribed", by the day they were added): an address is unsubscribed from the
site, not from one sender account.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from dbmail import states
from dbmail.models import DAILY_STATUS_COUNTS, HARD_BOUNCED, DailyStat, DailyStatDelta, Suppression

E = states.EmailStatus

COUNTS = DailyStat.COUNTS  # the statuses counted, and HARD_BOUNCED
SHOWN = (*COUNTS, "unsubscribed")
# Delivered, bounced, hard bounced, complained: shares of sent.
RATED = (E.DELIVERED.value, E.BOUNCED.value, HARD_BOUNCED, E.COMPLAINED.value)


def day_of(moment):
    """The site's date of a moment: the day an outcome is counted on."""
    # The site's zone named, not the current one (the same: nothing activates another), which asgiref's
    # context-local lookup made cost more than the date itself, once every outcome write.
    return timezone.localdate(moment, timezone.get_default_timezone())


# --- Writing: one additive delta row per key and batch ---


def count(outcomes):
    """Add delta rows for `outcomes`, an iterable of (day, account_id, request_id, status).

    `status` is an email status, or HARD_BOUNCED for an email whose bounce was reported hard
    (counted besides its "bounced"). Statuses the dashboard does not count (queued, sending,
    cancelled) are skipped.
    Call it inside the transaction that writes those statuses.
    """
    per_key = defaultdict(Counter)
    for day, account_id, request_id, status in outcomes:
        if status in COUNTS:
            per_key[(day, account_id, request_id)][status] += 1
    DailyStatDelta.objects.bulk_create(
        DailyStatDelta(day=day, account_id=account_id, request_id=request_id, **counts)
        for (day, account_id, request_id), counts in per_key.items()
    )


def insert_sql(source):
    """SQL adding delta rows from `source`, a relation with day, account_id, request_id, status.

    For a writer's own statement (a data-modifying CTE), so the count commits with the outcome.
    Statuses only: HARD_BOUNCED, which only tracking writes, takes its column's database default.
    """
    table = connection.ops.quote_name(DailyStatDelta._meta.db_table)
    sums = ", ".join(f"count(*) FILTER (WHERE status = '{name}')" for name in DAILY_STATUS_COUNTS)
    counted = ", ".join(f"'{name}'" for name in DAILY_STATUS_COUNTS)
    return (
        f"INSERT INTO {table} (day, account_id, request_id, {', '.join(DAILY_STATUS_COUNTS)}) "
        f"SELECT day, account_id, request_id, {sums} FROM {source} "
        f"WHERE status IN ({counted}) GROUP BY day, account_id, request_id"
    )


# --- Merging: dbmail_cron folds the deltas into one row per key ---

_MERGE_SQL = """
WITH moved AS (
    DELETE FROM {deltas} WHERE id IN (
        SELECT id FROM {deltas} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
    )
    RETURNING *
),
written AS (
    INSERT INTO {table} (day, account_id, request_id, {columns})
    SELECT day, account_id, request_id, {sums} FROM moved GROUP BY day, account_id, request_id
    ON CONFLICT (day, COALESCE(account_id, 0), COALESCE(request_id, 0))
    DO UPDATE SET {additions}
)
SELECT count(*) FROM moved
"""


def merge(limit=20_000):
    """Fold up to `limit` deltas into the roll-up; returns how many were folded.

    Safe with several dbmail_cron runs at once: each takes other deltas (SKIP LOCKED), and the
    upsert on the one-row-per-key index serialises those that meet on a key.
    """
    if connection.vendor != "postgresql":
        return _merge_portable(limit)
    table = connection.ops.quote_name(DailyStat._meta.db_table)
    sql = _MERGE_SQL.format(
        table=table,
        deltas=connection.ops.quote_name(DailyStatDelta._meta.db_table),
        columns=", ".join(COUNTS),
        sums=", ".join(f"sum({name})" for name in COUNTS),
        additions=", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in COUNTS),
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return cursor.fetchone()[0]


def merge_all(limit=20_000):
    """Merge until no delta is left (each round bounded); returns how many were folded."""
    folded = 0
    while (n := merge(limit)) == limit:
        folded += n
    return folded + n


def _merge_portable(limit=20_000):
    # SQLite (the demo): one writer at a time, so a read-then-write is safe here.
    with transaction.atomic():
        deltas = list(DailyStatDelta.objects.order_by("pk")[:limit])
        if not deltas:
            return 0
        sums = defaultdict(Counter)
        for row in deltas:
            sums[(row.day, row.account_id, row.request_id)].update({n: getattr(row, n) for n in COUNTS})
        DailyStatDelta.objects.filter(pk__in=[row.pk for row in deltas]).delete()
        for (day, account_id, request_id), counts in sums.items():
            row, _ = DailyStat.objects.get_or_create(day=day, account_id=account_id, request_id=request_id)
            for name in COUNTS:
                setattr(row, name, getattr(row, name) + counts[name])
            row.save()
    return len(deltas)


# --- Reading ---


@dataclass
class Figures:
    """Counts over a range of days: in total, per day (every day of the range) and per account."""

    start: object
    end: object
    total: dict = field(default_factory=dict)
    days: list = field(default_factory=list)  # [(day, {name: n})], oldest first, empty days included
    accounts: list = field(default_factory=list)  # [(account_id, {name: n})], most sent first

    @property
    def rates(self):
        return rates(self.total)


def _sums():
    return {name: Sum(name) for name in COUNTS}


def _filled(values):
    return {name: values.get(name) or 0 for name in SHOWN}


def _grouped(by, **filters):
    """{key: counts} summed over the roll-up and the deltas not merged yet."""
    grouped = defaultdict(Counter)
    for model in (DailyStat, DailyStatDelta):
        for row in model.objects.filter(**filters).values(by).annotate(**_sums()).order_by():
            grouped[row.pop(by)].update({name: n or 0 for name, n in row.items()})
    return grouped


def figures(start, end):
    """Figures for the days start..end (dates, both included)."""
    per_day = _grouped("day", day__gte=start, day__lte=end)
    unsubscribed = dict(
        Suppression.objects.filter(
            reason=Suppression.Reason.UNSUBSCRIBED,
            created_at__gte=_start_of(start),
            created_at__lt=_start_of(end, days=1),
        )
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(n=Count("id"))
        .order_by()
        .values_list("day", "n")
    )
    result = Figures(start, end)
    day = start
    while day <= end:
        result.days.append((day, _filled({**per_day.get(day, {}), "unsubscribed": unsubscribed.get(day, 0)})))
        day += timedelta(days=1)
    result.total = {name: sum(values[name] for _, values in result.days) for name in SHOWN}
    accounts = _grouped("account_id", day__gte=start, day__lte=end)
    result.accounts = sorted(
        ((pk, _filled(counts)) for pk, counts in accounts.items()), key=lambda item: (-item[1][E.SENT], item[0] or 0)
    )
    for _, values in result.accounts:
        del values["unsubscribed"]  # not a sender's figure: see the module's docstring
    return result


def _start_of(day, days=0):
    return timezone.make_aware(datetime.combine(day + timedelta(days=days), time.min))


def per_request(request_ids):
    """{request_id: counts} for these requests (requests with nothing counted yet are absent)."""
    grouped = _grouped("request_id", request_id__in=list(request_ids))
    return {pk: {name: counts[name] for name in COUNTS} for pk, counts in grouped.items()}


def rates(counts):
    """Delivered, bounced, hard bounced and complained as percentages of the emails the server accepted (None if none)."""
    sent = counts.get(E.SENT) or 0
    return {name: (round(100 * (counts.get(name) or 0) / sent, 1) if sent else None) for name in RATED}
