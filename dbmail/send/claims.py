"""Claiming emails to send: which process may send which row, and for how long.

A claim takes due rows with SELECT ... FOR UPDATE SKIP LOCKED and marks them
"sending" under a fresh token with a lease. Rows whose lease ran out (their
sender died) are due again. Every later write names the token, so a sender
that lost its lease can never overwrite another's work.

A run claims only rows that were due when it started (`due_by`), so an email
it deferred is never tried twice in one run; and a claim stops adding rows
once their bodies come to `max_bytes`, so big emails come a few at a time.
"""

import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import BigIntegerField, BooleanField, F, JSONField, Q, signals
from django.db.models.base import ModelState
from django.db.models.expressions import RawSQL
from django.utils import timezone

from dbmail import prepared, states
from dbmail.conf import settings as conf
from dbmail.models import MessageRequest, SenderAccount, TextOfEmail
from dbmail.send import takeover

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

    _renew_for: object = field(default=None, init=False, repr=False, compare=False)
    _renew_from: float = field(default=0.0, init=False, repr=False, compare=False)

    def renew_if_needed(self):
        """Extend the lease on the rows still to send once half of it has passed."""
        if self._renew_for is not self.lease_until:  # asked before every message: work it out once a lease
            half = timedelta(seconds=conf.DBMAIL_LEASE_SECONDS) / 2
            self._renew_for, self._renew_from = self.lease_until, (self.lease_until - half).timestamp()
        if time.time() < self._renew_from or not self.open_ids:
            return
        lease = timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
        now = timezone.now()
        if self.lease_until - now > lease / 2:
            return
        self.lease_until = now + lease
        TextOfEmail.objects.filter(pk__in=self.open_ids, claim_token=self.token).update(leased_until=self.lease_until)

    def release(self, pks=None):
        """Give the rows not attempted back as they were (a clean stop is not an attempt); `pks`: only those."""
        given = self.open_ids if pks is None else self.open_ids.intersection(pks)
        for status, release in states.RELEASE.items():
            ids = [pk for pk in given if self.claimed_from.get(pk, Status.QUEUED) == status]
            if ids:
                release.update(
                    TextOfEmail.objects.filter(pk__in=ids, claim_token=self.token),
                    claim_token=None,
                    leased_until=None,
                    attempts=F("attempts") - 1,
                )
        if pks is None:
            self.open_ids.clear()
        else:
            self.open_ids.difference_update(given)


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


def claim(limit, now=None, scope=None, after=None, due_by=None, max_bytes=None, pacer=None, token=None):
    """Claim up to `limit` due emails for this process.

    `scope` (a Q) restricts the claim to matching rows, due or not: an operator's forced send.
    `after` ((next_attempt_at, pk) of the last row this run claimed) starts the index scan past
    the rows already sent: until vacuum runs, their old index entries would otherwise be walked
    again by every claim, and a long queue would cost a quadratic scan.
    `due_by` (the run's start): only rows due by then and not touched since (one attempt per
    email per run). `max_bytes`: stop adding rows once their bodies come to this (the first
    row always comes, whatever its size). `pacer` (dbmail.send.pacing): the budgets of
    destinations and sender accounts; rows over them are not claimed, and wait untouched.
    `token`: the claim's, the next of its sender's takeover.tokens() (a new sender's first by default).
    """
    now = now or timezone.now()
    due_by = min(due_by or now, now)
    token = token or next(takeover.tokens())
    lease_until = now + timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
    waiting = Q()  # the pacer's groups and accounts that must wait now (usually none)
    if pacer is not None:
        waiting = pacer.claimable()
    with transaction.atomic():
        if after is None:
            _give_back_held(now)
        if scope is None and not waiting and connection.vendor == "postgresql":
            candidates = _candidates_postgresql(limit, now, due_by, after, paced=pacer is not None)
        else:
            # The ORM's query, composed only here: on PostgreSQL's usual path its parts cost a claim
            # more interpreter time than the two statements written out.
            rows = TextOfEmail.objects.select_for_update(skip_locked=True)
            held = ~_held() & ~_paused() & waiting
            columns = ("pk", "status", _body_bytes())
            if pacer is not None:
                columns += ("account_id", "dest_group", "to_address")
            candidates = _candidates(rows, held, columns, limit, now, due_by, after, scope)
        picked, sizes, total = {}, {}, 0
        for pk, status, nbytes, *_ in candidates:
            if picked and max_bytes is not None and total + nbytes > max_bytes:
                break  # the rest stay due; their row locks end with this transaction
            picked[pk], sizes[pk] = status, nbytes
            total += nbytes
        if pacer is not None and picked:
            # Over a budget: not claimed, no attempt counted; the row lock ends with this transaction.
            admitted = pacer.admit([(pk, *rest) for pk, _, _, *rest in candidates if pk in picked])
            picked = {pk: picked[pk] for pk in admitted}
        total = sum(sizes[pk] for pk in picked)
        stale = [pk for pk, status in picked.items() if status == Status.SENDING]
        if stale:  # rare: a sender stopped without giving its rows back; it may have sent some
            takeover.judge(stale, now)
        if picked and connection.vendor == "postgresql":
            emails = _take_postgresql(list(picked), token, lease_until, now)
        elif picked:
            # Re-checking the state makes this safe where SKIP LOCKED does nothing (SQLite).
            states.CLAIM.update(
                TextOfEmail.objects.filter(pk__in=list(picked)).exclude(status=Status.SENDING, leased_until__gt=now),
                claim_token=token,
                leased_until=lease_until,
                attempts=F("attempts") + 1,
                status_changed_at=now,
            )
    if picked and connection.vendor != "postgresql":
        emails = list(TextOfEmail.objects.filter(pk__in=list(picked), claim_token=token).select_related("account"))
    emails = sorted(emails, key=takeover.SEND_ORDER) if picked else []
    # A row taken over from a dead sender goes back as deferred if it is released unsent.
    claimed_from = {pk: (Status.DEFERRED if status == Status.SENDING else status) for pk, status in picked.items()}
    return Claim(emails, token, lease_until, claimed_from, bytes=total)


def _candidates(rows, held, columns, limit, now, due_by, after, scope):
    """`columns` of the rows to claim, locked, stale ones first: the ORM's way (any database, a scope, pacing waits)."""
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
    candidates = list(stale.order_by("leased_until").values_list(*columns)[:limit])
    if len(candidates) < limit:
        candidates += due.order_by("next_attempt_at", "pk").values_list(*columns)[: limit - len(candidates)]
    return candidates


def _candidates_postgresql(limit, now, due_by, after, paced=False):
    """The same rows as _candidates for a run's own claims (no scope, no pacing wait), in two plain statements.

    `paced`: with the pacer's columns (account, destination group, address) after the size.

    The ORM would spend longer composing these two queries, for every batch, than PostgreSQL
    spends running them; the SQL is the ORM's, written out (tests/test_claims.py runs both), and
    prepared once a session: planning them again for every batch cost PostgreSQL more than
    running them.
    """
    suffix = "_paced" if paced else ""
    with connection.cursor() as cursor:
        # For the rest of the claim's transaction, each statement's plan made once (a generic plan): by
        # the cost estimates of its bounds PostgreSQL planned the due rows' statement afresh every claim.
        generic = "SET LOCAL plan_cache_mode TO force_generic_plan;"
        params = [now, due_by, limit]
        prepared.execute(cursor, "dbmail_claim_stale" + suffix, _candidate_sql("stale", paced), params, prefix=generic)
        candidates = cursor.fetchall()
        if len(candidates) < limit:
            left = limit - len(candidates)
            if after is None:
                prepared.execute(cursor, "dbmail_claim_due" + suffix, _candidate_sql("due", paced), [due_by, left])
            else:
                params = [due_by, *after, left]
                prepared.execute(cursor, "dbmail_claim_due_after" + suffix, _candidate_sql("due_after", paced), params)
            candidates += cursor.fetchall()
    return candidates


_CANDIDATE_SQL = {}  # (which, paced) -> the statement, written once


def _candidate_sql(which, paced):
    """The SQL of one of _candidates_postgresql's statements ($n parameters).

    The states are written in, not parameters: a generic plan must still see that the
    condition is a partial index's (dbmail_lease, dbmail_due).
    """
    sql = _CANDIDATE_SQL.get((which, paced))
    if sql is not None:
        return sql
    quote = connection.ops.quote_name
    table = quote(TextOfEmail._meta.db_table)
    size = _body_bytes().sql
    accounts = quote(SenderAccount._meta.db_table)
    requests = quote(MessageRequest._meta.db_table)
    held = (
        f"({table}.account_id IS NULL OR {table}.account_id NOT IN (SELECT id FROM {accounts} WHERE NOT active)) "
        f"AND ({table}.request_id IS NULL OR {table}.request_id NOT IN "
        f"(SELECT id FROM {requests} WHERE status = '{states.RequestStatus.PAUSED}'))"
    )
    waiting = ", ".join(f"'{status}'" for status in states.WAITING)
    if paced:
        size += f", {table}.account_id, {table}.dest_group, {table}.to_address"
    if which == "stale":
        sql = (
            f"SELECT id, status, {size} FROM {table} WHERE status = '{Status.SENDING}' "
            f"AND leased_until <= $1::timestamptz AND status_changed_at <= $2::timestamptz AND {held} "
            f"ORDER BY leased_until LIMIT $3::bigint FOR UPDATE SKIP LOCKED"
        )
    else:
        past, limit = "", "$2"
        if which == "due_after":
            past, limit = f"AND ({table}.next_attempt_at, {table}.id) > ($2::timestamptz, $3::bigint) ", "$4"
        sql = (
            f"SELECT id, status, {size} FROM {table} WHERE status IN ({waiting}) AND next_attempt_at <= $1::timestamptz "
            f"{past}AND {held} ORDER BY next_attempt_at, id LIMIT {limit}::bigint FOR UPDATE SKIP LOCKED"
        )
    _CANDIDATE_SQL[(which, paced)] = sql
    return sql


# The claim's UPDATE on PostgreSQL: one prepared statement that marks the rows and hands them back
# (RETURNING), instead of an UPDATE and then a SELECT through the ORM of every row it claimed.
# Its conditions are CLAIM's sources and the same re-check as the portable path's.
#
# It returns the columns sending reads, not every column: the ones the claim itself sets are known
# without reading them back (_SET_BY_CLAIM), and those only an outcome writes, and the user, are left
# deferred (_NOT_READ): Django loads such a field on first access (one query), and nothing on the
# send path makes one. Reading and converting every column was a third of a claim's interpreter time.
_SET_BY_CLAIM = ("status", "claim_token", "leased_until", "status_changed_at")
_NOT_READ = ("user_id", "sent_at", "last_error", "possibly_delivered")
_TAKE_SQL = None


def _returned_fields():
    return [f for f in TextOfEmail._meta.concrete_fields if f.attname not in _SET_BY_CLAIM + _NOT_READ]


def _take_sql():
    global _TAKE_SQL
    if _TAKE_SQL is None:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(f.column) for f in _returned_fields())
        sources = ", ".join(f"'{status}'" for status in states.CLAIM.sources)
        _TAKE_SQL = (
            f"UPDATE {quote(TextOfEmail._meta.db_table)} SET status = '{states.CLAIM.target}', claim_token = $1::uuid, "
            f"leased_until = $2::timestamptz, attempts = attempts + 1, status_changed_at = $3::timestamptz "
            f"WHERE id = ANY($4::bigint[]) AND status IN ({sources}) "
            f"AND NOT (status = '{Status.SENDING}' AND leased_until IS NOT NULL AND leased_until > $3::timestamptz) "
            f"RETURNING {columns}"
        )
    return _TAKE_SQL


def _take_postgresql(ids, token, lease_until, now):
    """Claim `ids` (locked by the caller's SELECT ... FOR UPDATE) and return them as model instances."""
    # The ids as an array's text: psycopg2 would adapt a list element by element.
    id_array = "{" + ",".join(map(str, ids)) + "}"
    with connection.cursor() as cursor:
        prepared.execute(cursor, "dbmail_claim", _take_sql(), [str(token), lease_until, now, id_array])
        rows = cursor.fetchall()
    # What select_related("account") gave: each email's account, read once per batch.
    accounts = _accounts({row[_ACCOUNT_AT] for row in rows if row[_ACCOUNT_AT] is not None})
    set_by_claim = {"status": str(states.CLAIM.target), "claim_token": token, "leased_until": lease_until}
    set_by_claim["status_changed_at"] = now
    return _instances(rows, accounts, set_by_claim)


def _accounts(ids):
    """{pk: SenderAccount} for `ids`, read afresh (a cap or a setting changed since the last batch counts).

    What SenderAccount.objects.in_bulk(ids) returns, in one plain (prepared) statement: composing that
    query through the ORM took a seventh of the database thread's interpreter time, for one
    row. Instances come from Model.from_db, with each field's own conversion from the database.
    """
    if not ids:
        return {}
    fields = SenderAccount._meta.concrete_fields
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    sql = f"SELECT {columns} FROM {quote(SenderAccount._meta.db_table)} WHERE id = ANY($1::bigint[])"
    with connection.cursor() as cursor:
        # Prepared, as the claim's other statements: planned once a session, not once a batch.
        prepared.execute(cursor, "dbmail_claim_accounts", sql, ["{" + ",".join(map(str, sorted(ids))) + "}"])
        rows = cursor.fetchall()
    names = [f.attname for f in fields]
    converters = [(i, f.get_db_converters(connection)) for i, f in enumerate(fields) if f.get_db_converters(connection)]
    accounts = {}
    for row in rows:
        if converters:
            row = list(row)
            for i, funcs in converters:
                for func in funcs:
                    row[i] = func(row[i], None, connection)
        account = SenderAccount.from_db(connection.alias, names, row)
        accounts[account.pk] = account
    return accounts


_ACCOUNT_AT = [f.attname for f in _returned_fields()].index("account_id")


def _instances(rows, accounts, set_by_claim):
    """Model instances of the claim's rows (_returned_fields' columns, and `set_by_claim`'s values),
    as Model.from_db makes them for a query that defers the other fields, for a fraction of its cost.

    from_db goes through Model.__init__, which sets each field through its descriptor: for a
    batch of 100 that was most of a claim's Python time. The instance's __dict__ is filled at
    once instead (what __init__ would leave there: each loaded field's attname, and the state of
    a row loaded from this database). Should anything listen to the model's init signals,
    from_db is used, as the signals must be sent.
    """
    returned = _returned_fields()
    names = [f.attname for f in returned]
    by_name = {f.attname: f for f in TextOfEmail._meta.concrete_fields}
    # `set_by_claim` holds Python values already (the token a UUID): only the returned columns are converted.
    converters = [(name, by_name[name].get_db_converters(connection)) for name in names]
    converters = [(name, funcs) for name, funcs in converters if funcs]
    # Nearly every email's extra headers are "{}": json.loads (through JSONField's converter) not needed for that.
    plain_json = {name for name, f in by_name.items() if isinstance(f, JSONField) and f.decoder is None}
    account_field = TextOfEmail._meta.get_field("account")
    signalled = signals.pre_init.has_listeners(TextOfEmail) or signals.post_init.has_listeners(TextOfEmail)
    loaded = [f.attname for f in TextOfEmail._meta.concrete_fields if f.attname in names or f.attname in set_by_claim]
    alias = connection.alias
    emails = []
    for row in rows:
        values = dict(zip(names, row, strict=True))
        values.update(set_by_claim)
        for name, funcs in converters:
            value = values[name]
            if value == "{}" and name in plain_json:
                values[name] = {}
                continue
            for func in funcs:
                value = func(value, None, connection)
            values[name] = value
        if signalled:
            email = TextOfEmail.from_db(alias, loaded, [values[name] for name in loaded])
        else:
            email = TextOfEmail.__new__(TextOfEmail)
            email.__dict__.update(values)
            state = email._state = ModelState()
            state.adding, state.db = False, alias
        account_id = values["account_id"]
        if account_id is not None:
            account_field.set_cached_value(email, accounts[account_id])
        emails.append(email)
    return emails


def _held():
    """Rows of inactive sender accounts: held, never claimed (so neither sent nor dropped) until it is active again.

    A subquery, not a join: FOR UPDATE would lock the account row too, and a
    second sender would then skip every email of that account.
    """
    return Q(account_id__in=SenderAccount.objects.filter(active=False).values("pk"))


def _paused():
    """Rows of a paused request (dbmail.track.guard): not claimed until a person resumes it."""
    return Q(request_id__in=MessageRequest.objects.filter(status=states.RequestStatus.PAUSED).values("pk"))


def _give_back_held(now):
    """Rows of an inactive account or a paused request left "sending" by a sender that died go back to deferred.

    Those it may have sent are marked possibly delivered first (dbmail.send.takeover).
    """
    left = TextOfEmail.objects.filter(_held() | _paused(), status=Status.SENDING, leased_until__lte=now)
    ids = list(left.select_for_update(skip_locked=True).values_list("pk", flat=True))
    if not ids:
        return
    takeover.judge(ids, now)
    states.RELEASE[Status.DEFERRED].update(
        TextOfEmail.objects.filter(pk__in=ids),
        claim_token=None,
        leased_until=None,
        status_changed_at=now,
    )


def claim_one(email, pacer=None):
    """Claim one specific queued email (the ad-hoc path); None if someone else has it, or over a budget."""
    if pacer is not None and not pacer.admit_one(email):
        return None  # left queued for the next dbmail_cron run
    now = timezone.now()
    token = next(takeover.tokens())
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


def due_count(now=None, at_most=None):
    """How many emails a claim could take now: due waiting ones and those whose sender's lease ran out.

    `at_most`: count no further than that (a question of "enough?" need not walk a backlog of millions).
    """
    now = now or timezone.now()
    due = TextOfEmail.objects.filter(
        Q(status__in=states.WAITING, next_attempt_at__lte=now) | Q(status=Status.SENDING, leased_until__lte=now)
    )
    return (due if at_most is None else due.values("pk")[:at_most]).count()
