"""Token buckets in the database: one row per destination group (and "*" for all mail), shared by every host.

A bucket fills at its group's rate (after back-off: dbmail.send.backoff) up
to its capacity, and a sender takes tokens for the emails it claims, in the
claim's own transaction, the bucket rows locked in name order so that two
senders never deadlock. Refilling is worked out from the time since the last
take, so nothing has to run between takes. Hosts' clocks may differ a
little: time never runs backwards for a bucket (a host whose clock is behind
refills nothing), so a skew can only slow a group down, never speed it up.
"""

from django.db import transaction

from dbmail.models import PacingBucket
from dbmail.send import backoff
from dbmail.send.destinations import ALL

FIELDS = [
    "tokens",
    "refilled_at",
    "configured_per_minute",
    "slowed_per_minute",
    "slowed_since",
    "last_pushback_at",
    "last_halved_at",
    "pushbacks",
    "pushback_text",
]


def capacity(name, per_minute):
    """How many emails a full bucket holds.

    A group: a minute's worth, so a run once a minute (cron) still keeps its
    rate. All mail together (a relay's quota per second): a second's worth.
    """
    return max(1.0, per_minute / 60 if name == ALL else per_minute)


def ensure(configured, now):
    """Create the buckets of `configured` (name -> rate per minute) that do not exist yet, full."""
    names = sorted(configured)
    PacingBucket.objects.bulk_create(
        [
            PacingBucket(
                name=n, tokens=capacity(n, configured[n]), refilled_at=now, configured_per_minute=configured[n]
            )
            for n in names
        ],
        ignore_conflicts=True,  # inserted in name order: two senders creating them wait, never deadlock
    )


def lock(configured, now):
    """The buckets of `configured` (name -> configured rate per minute), locked until the transaction ends."""
    rows = {b.name: b for b in PacingBucket.objects.select_for_update().filter(name__in=configured).order_by("name")}
    if len(rows) < len(configured):  # a group configured since the run started
        missing = {n: r for n, r in configured.items() if n not in rows}
        ensure(missing, now)
        rows.update({b.name: b for b in PacingBucket.objects.select_for_update().filter(name__in=missing)})
    for name, bucket in rows.items():
        bucket.configured_per_minute = configured[name]  # what this host's settings say
    return rows


def refill(bucket, now):
    """Add what the bucket earned since it was last taken from; returns its rate per minute (0: no limit)."""
    rate = backoff.effective_rate(bucket, now)
    if rate > 0:
        elapsed = max(0.0, (now - bucket.refilled_at).total_seconds())
        bucket.tokens = min(capacity(bucket.name, rate), bucket.tokens + rate / 60 * elapsed)
    if now > bucket.refilled_at:
        bucket.refilled_at = now
    return rate


def save(rows):
    PacingBucket.objects.bulk_update(list(rows), FIELDS)


def push_back(name, configured_per_minute, text, now):
    """Record a pushback from the group `name` for every host; returns (halved, the rate now in force)."""
    with transaction.atomic():
        bucket = lock({name: configured_per_minute}, now)[name]
        refill(bucket, now)
        halved = backoff.push_back(bucket, text, now)
        save([bucket])
    return halved, backoff.effective_rate(bucket, now)


def slowed(now):
    """The buckets of groups slowed down at `now`, the longest slowed first."""
    rows = PacingBucket.objects.filter(slowed_per_minute__isnull=False).order_by("slowed_since", "name")
    return [b for b in rows if backoff.is_slowed(b, now)]
