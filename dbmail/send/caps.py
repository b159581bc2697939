"""Daily caps and warm-up per sender account, counted for every host together.

A sender account may have a daily cap (SenderAccount.daily_cap), and a
warm-up that makes the cap grow from `warmup_initial` on `warmup_start`,
times `warmup_factor` each day, until it reaches the daily cap
(SenderAccount.cap_on). Days are UTC days. The count is one row per account
and day (SenderDailyCount), taken from in the transaction that claims the
emails (dbmail.send.pacing), so two hosts never both take the last place.

An email over its account's cap is not claimed: it waits, without counting
as an attempt, for the next UTC day, and the comm panel and dbmail_status say
so. An email claimed but not tried (a run that stops, a destination that
pushed back) or not counted as an attempt (the server's fault) gives its
place back.
"""

from datetime import UTC, datetime, time, timedelta

from django.db.models import F, Value
from django.db.models.functions import Greatest

from dbmail.models import SenderAccount, SenderDailyCount

WAITING_WORDS = "waiting: daily cap reached, resumes tomorrow 00:00 UTC"


def day_of(moment):
    """The UTC day of a moment: the day a cap counts."""
    return moment.astimezone(UTC).date()


def next_day(moment):
    """00:00 UTC of the day after `moment`'s."""
    return datetime.combine(day_of(moment) + timedelta(days=1), time.min, tzinfo=UTC)


def capped_accounts():
    """{pk: SenderAccount} of the accounts that have a cap."""
    fields = ("pk", "address", "daily_cap", "warmup_start", "warmup_initial", "warmup_factor")
    return {a.pk: a for a in SenderAccount.objects.filter(daily_cap__isnull=False).only(*fields)}


def places_left(caps, day):
    """{account pk: places left on `day`} for `caps` ({pk: cap}), the count rows locked until the transaction ends."""
    ids = sorted(caps)
    # Inserted in id order, then locked in id order: two senders never deadlock.
    SenderDailyCount.objects.bulk_create(
        [SenderDailyCount(account_id=pk, day=day) for pk in ids], ignore_conflicts=True
    )
    rows = SenderDailyCount.objects.select_for_update().filter(account_id__in=ids, day=day).order_by("account_id")
    return {row.account_id: max(0, caps[row.account_id] - row.taken) for row in rows}


def take(used, day):
    """Count `used` ({account pk: n}) emails on `day` (inside the transaction of places_left)."""
    for pk, n in used.items():
        if n:
            SenderDailyCount.objects.filter(account_id=pk, day=day).update(taken=F("taken") + n)


def give_back(counts):
    """Give places back: `counts` is {(account pk, day): n} of emails counted but never tried."""
    for (pk, day), n in counts.items():
        if n:
            SenderDailyCount.objects.filter(account_id=pk, day=day).update(taken=Greatest(F("taken") - n, Value(0)))


def usage(account, now):
    """(cap today, sent today) of an account; cap None when it has none."""
    day = day_of(now)
    cap = account.cap_on(day)
    if cap is None:
        return None, 0
    row = SenderDailyCount.objects.filter(account=account, day=day).values_list("taken", flat=True).first()
    return cap, row or 0


def reached(now):
    """[(account, cap, sent)] of the accounts whose cap for today is reached."""
    day = day_of(now)
    counts = dict(
        SenderDailyCount.objects.filter(day=day, account__daily_cap__isnull=False).values_list("account_id", "taken")
    )
    full = []
    for account in SenderAccount.objects.filter(pk__in=counts).order_by("address"):
        cap = account.cap_on(day)
        if cap is not None and counts[account.pk] >= cap:
            full.append((account, cap, counts[account.pk]))
    return full


def waiting_words(account, now):
    """The words for mail of `account` that waits for tomorrow's cap, or "" when its cap is not reached."""
    cap, sent = usage(account, now)
    if cap is None or sent < cap:
        return ""
    return f"{WAITING_WORDS} (sender {account.address}: {sent:,} of {cap:,} today)"
