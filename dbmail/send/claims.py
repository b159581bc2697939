"""Claiming emails to send: which process may send which row, and for how long.

A claim takes due rows with SELECT ... FOR UPDATE SKIP LOCKED and marks them
"sending" under a fresh token with a lease. Rows whose lease ran out (their
sender died) are due again. Every later write names the token, so a sender
that lost its lease can never overwrite another's work.

A run claims only rows that were due when it started (`due_by`), so an email
it deferred is never tried twice in one run; and a claim stops adding rows
once their bodies come to `max_bytes`, so big emails come a few at a time.
"""

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import BigIntegerField, BooleanField, F, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.models import SenderAccount, TextOfEmail

Status = states.EmailStatus


@dataclass
class Claim:
    """A batch of rows held by this process under one token."""

    emails: list
    token: uuid.UUID
    lease_until: object
    claimed_from: dict = field(default_factory=dict)  # pk -> status to give the row back in
    open_ids: set = field(default_factory=set)  # claimed and no outcome handed over yet
    after: tuple | None = None  # (next_attempt_at, pk) of the last row: where the next claim starts
    bytes: int = 0  # the bodies' size (text, HTML, raw message) as stored

    def __post_init__(self):
        self.open_ids = {e.pk for e in self.emails}
        if self.emails:
            last = max(self.emails, key=lambda e: (e.next_attempt_at, e.pk))
            self.after = (last.next_attempt_at, last.pk)

    def renew_if_needed(self):
        """Extend the lease on the rows still to send once half of it has passed."""
        lease = timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
        now = timezone.now()
        if self.lease_until - now > lease / 2 or not self.open_ids:
            return
        self.lease_until = now + lease
        TextOfEmail.objects.filter(pk__in=self.open_ids, claim_token=self.token).update(leased_until=self.lease_until)

    def release(self):
        """Give the rows not attempted back as they were (a clean stop is not an attempt)."""
        for status, release in states.RELEASE.items():
            ids = [pk for pk in self.open_ids if self.claimed_from.get(pk, Status.QUEUED) == status]
            if ids:
                release.update(
                    TextOfEmail.objects.filter(pk__in=ids, claim_token=self.token),
                    claim_token=None,
                    leased_until=None,
                    attempts=F("attempts") - 1,
                )
        self.open_ids.clear()


def _body_bytes():
    # The stored length, read from each value's header: PostgreSQL need not decompress (detoast) it.
    table = connection.ops.quote_name(TextOfEmail._meta.db_table)
    if connection.vendor == "postgresql":
        length = "octet_length({})"
    else:
        length = "length(CAST({} AS BLOB))"
    columns = [length.format(f"{table}.{c}") for c in ("text", "html")]
    sql = f"({' + '.join(columns)} + COALESCE({length.format(f'{table}.raw_message')}, 0))"
    return RawSQL(sql, (), output_field=BigIntegerField())


def claim(limit, now=None, scope=None, after=None, due_by=None, max_bytes=None):
    """Claim up to `limit` due emails for this process.

    `scope` (a Q) restricts the claim to matching rows, due or not: an operator's forced send.
    `after` ((next_attempt_at, pk) of the last row this run claimed) starts the index scan past
    the rows already sent: until vacuum runs, their old index entries would otherwise be walked
    again by every claim, and a long queue would cost a quadratic scan.
    `due_by` (the run's start): only rows due by then and not touched since (one attempt per
    email per run). `max_bytes`: stop adding rows once their bodies come to this (the first
    row always comes, whatever its size).
    """
    now = now or timezone.now()
    due_by = min(due_by or now, now)
    token = uuid.uuid4()
    lease_until = now + timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
    rows = TextOfEmail.objects.select_for_update(skip_locked=True)
    held = ~_held()
    with transaction.atomic():
        if after is None:
            _give_back_held(now)
        # Two ordered index scans rather than one OR, so neither sorts the whole queue.
        stale = rows.filter(status=Status.SENDING, leased_until__lte=now, status_changed_at__lte=due_by).filter(held)
        due = (
            rows.filter(status__in=states.WAITING)
            .filter(Q(next_attempt_at__lte=due_by) if scope is None else scope & Q(status_changed_at__lte=due_by))
            .filter(held)
        )
        if after is not None:
            table = connection.ops.quote_name(TextOfEmail._meta.db_table)
            past = f"({table}.next_attempt_at, {table}.id) > (%s, %s)"
            due = due.filter(RawSQL(past, after, output_field=BooleanField()))
        if scope is not None:
            stale = stale.filter(scope)
        size = _body_bytes()
        candidates = list(stale.order_by("leased_until").values_list("pk", "status", size)[:limit])
        if len(candidates) < limit:
            candidates += due.order_by("next_attempt_at", "pk").values_list("pk", "status", size)[
                : limit - len(candidates)
            ]
        picked, total = {}, 0
        for pk, status, nbytes in candidates:
            if picked and max_bytes is not None and total + nbytes > max_bytes:
                break  # the rest stay due; their row locks end with this transaction
            picked[pk] = status
            total += nbytes
        if picked:
            # Re-checking the state makes this safe where SKIP LOCKED does nothing (SQLite).
            states.CLAIM.update(
                TextOfEmail.objects.filter(pk__in=list(picked)).exclude(status=Status.SENDING, leased_until__gt=now),
                claim_token=token,
                leased_until=lease_until,
                attempts=F("attempts") + 1,
                status_changed_at=now,
            )
    emails = list(
        TextOfEmail.objects.filter(pk__in=list(picked), claim_token=token)
        .select_related("account")
        .order_by("account_id", "request_id", "pk")  # a request's emails together: its attachments are read once
    )
    # A row taken over from a dead sender goes back as deferred if it is released unsent.
    claimed_from = {pk: (Status.DEFERRED if status == Status.SENDING else status) for pk, status in picked.items()}
    return Claim(emails, token, lease_until, claimed_from, bytes=total)


def _held():
    """Rows of inactive sender accounts: held, never claimed (so neither sent nor dropped) until it is active again.

    A subquery, not a join: FOR UPDATE would lock the account row too, and a
    second sender would then skip every email of that account.
    """
    return Q(account_id__in=SenderAccount.objects.filter(active=False).values("pk"))


def _give_back_held(now):
    """Rows of an inactive account left "sending" by a sender that died go back to deferred, held there."""
    states.RELEASE[Status.DEFERRED].update(
        TextOfEmail.objects.filter(_held(), leased_until__lte=now),
        claim_token=None,
        leased_until=None,
        status_changed_at=now,
    )


def claim_one(email):
    """Claim one specific queued email (the ad-hoc path); None if someone else has it."""
    now = timezone.now()
    token = uuid.uuid4()
    lease_until = now + timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
    taken = states.CLAIM_NOW.update(
        # held: the first cron run after the account is active again sends it
        TextOfEmail.objects.filter(pk=email.pk).exclude(_held()),
        claim_token=token,
        leased_until=lease_until,
        attempts=F("attempts") + 1,
        status_changed_at=now,
    )
    if not taken:
        return None
    claimed = TextOfEmail.objects.select_related("account").get(pk=email.pk)
    return Claim([claimed], token, lease_until, {email.pk: Status.QUEUED})


def due_count(now=None):
    """How many emails a claim could take now: due waiting ones and those whose sender's lease ran out."""
    now = now or timezone.now()
    return TextOfEmail.objects.filter(
        Q(status__in=states.WAITING, next_attempt_at__lte=now) | Q(status=Status.SENDING, leased_until__lte=now)
    ).count()
