"""Pacing: how much mail to each destination a sender may claim now, shared by every host.

One Pacer serves one sender run (dbmail.send.loop.Sender). The claim
(dbmail.send.claims) asks it twice per batch, in the claim's transaction:

- `claimable()`: a filter leaving out the groups and accounts known to have
  to wait (no budget, no connection slot, a daily cap reached), so the
  claim walks past their rows instead of taking them;
- `admit(candidates)`: of the rows found, those the budgets allow, in queue
  order. The others are not claimed at all: they wait, with no attempt
  counted, while the rest of the queue goes on.

The budgets, all in the database so that every dbmail_cron on every host
shares them, with no coordinator:

- each destination group's rate (dbmail.send.destinations), a token bucket
  per group (dbmail.send.buckets), slowed when the destination pushes back
  (dbmail.send.backoff);
- DBMAIL_THROTTLE_PER_SECOND: one bucket for all mail together;
- each group's max_connections: leased slot rows (ConnectionSlot); a run
  takes one with its first email to that group and gives it back as soon
  as it has no more of that group's mail in hand (every email it claimed
  tried or given back), or at its end; the lease, renewed while the run
  lives, frees it after a kill -9;
- each sender account's daily cap (dbmail.send.caps).

A grant that is not used up (the run stops, the destination pushes back)
is not given back to a group's bucket: the budget errs on the slow side. A
daily cap's places are given back for emails that were never tried or whose
attempt did not count.

Nothing here costs a database round trip on the common path: with mail to
groups without limits, no throttle and no caps, admit() only looks up each
row's group in memory. What it knows of others' work (slowed groups, caps)
it reads again every REFRESH, two small queries.
"""

import logging
import math
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.models import ConnectionSlot, MessageRequest, PacingBucket, SenderAccount, TextOfEmail
from dbmail.send import backoff, buckets, caps, limits
from dbmail.send.destinations import ALL, DEFAULT

log = logging.getLogger(__name__)

REFRESH = timedelta(seconds=5)
SLOT_RETRY = timedelta(seconds=2)  # how soon a run that found no free slot asks again
# A run without a deadline waits for budget only this long; with one (--max-seconds), until then.
MAX_IDLE_WAIT = 5.0


@dataclass
class _Plan:
    """What one claim's candidates need, worked out in memory; `free`: nothing needs the database."""

    now: object
    day: object
    rows: list  # (pk, account pk, group)
    unclassified: dict  # pk -> group, for rows stored without one
    rates: dict  # group (or ALL) -> rate per minute
    paced: set  # groups (and ALL) whose bucket must give a grant
    no_slot: set  # groups whose connection slot this run could not get
    capped: dict  # account pk -> today's cap
    free: bool


# The destination groups the due mail and the mail of dead senders carry now (NULL: not classified yet):
# a loose index scan of dbmail_waiting_group, one index descent for each value, however many rows.
_PRESENT_SQL = """
WITH RECURSIVE present(value) AS (
    (SELECT dest_group FROM {table} WHERE status IN ({waiting}) AND next_attempt_at <= %(now)s
     AND dest_group IS NOT NULL ORDER BY dest_group LIMIT 1)
    UNION ALL
    SELECT (SELECT dest_group FROM {table} WHERE status IN ({waiting}) AND next_attempt_at <= %(now)s
            AND dest_group > present.value ORDER BY dest_group LIMIT 1)
    FROM present WHERE present.value IS NOT NULL
)
SELECT value FROM present WHERE value IS NOT NULL
UNION SELECT NULL WHERE EXISTS (
    SELECT 1 FROM {table} WHERE status IN ({waiting}) AND next_attempt_at <= %(now)s AND dest_group IS NULL)
UNION SELECT dest_group FROM {table} WHERE status = '{sending}' AND leased_until <= %(now)s
"""


def other_groups(waiting, present=None):
    """Rows of any group but those `waiting` (and rows not classified yet: admit() sorts them).

    `present` (PostgreSQL): the dest_group values due mail carries now (_PRESENT_SQL). Then the
    filter names the others, not the waiting ones: with one group left (usually the default),
    PostgreSQL reads its rows in queue order from the index dbmail_waiting_group and never
    touches the waiting rows. A NOT IN can only be checked row by row: each claim from the start
    of the queue would walk a waiting backlog of a million rows in dbmail_due to reach the rest
    (bench/backlog.py). Values, not configured names: a row may carry a group no longer configured.
    """
    if present is None:
        return ~Q(dest_group__in=sorted(waiting))
    names = sorted(v for v in present if v is not None and v not in waiting)
    q = Q(dest_group__in=names) if names else Q(pk__in=[])
    return q | Q(dest_group__isnull=True) if None in present else q


class Pacer:
    def __init__(self, batch_size=None, clock=None, throttle=None):
        self.clock = clock or timezone.now
        self.groups = limits.in_force()  # the settings' groups, with the admin's changes (DestinationLimit)
        self.batch_size = batch_size or conf.DBMAIL_BATCH_SIZE
        self.per_second = conf.DBMAIL_THROTTLE_PER_SECOND if throttle is None else throttle
        self.holder = uuid.uuid4()  # this run, in the connection slots it holds
        self._lock = threading.Lock()  # claims run on the database thread, outcomes on the SMTP thread
        self._started = False
        self._refreshed_at = None
        self._buckets = {}  # name -> PacingBucket as last read: who is slowed
        self._capped = {}  # account pk -> SenderAccount with a daily cap
        self._waiting = {}  # group -> until when its mail is not claimed (no budget, no slot)
        self._accounts_waiting = {}  # account pk -> until when (the next UTC day)
        self._all_waiting = None  # until when no mail is claimed (DBMAIL_THROTTLE_PER_SECOND)
        self._held_back = {}  # group -> until when its claimed mail is given back untried (it pushed back)
        self._present = None  # (when read, the dest_group values of due mail) while a group waits
        self._slots = {}  # group -> the slot this run holds
        self._in_hand = {}  # email pk -> group, for the claimed mail of groups whose slot this run holds
        self._in_hand_count = Counter()  # group -> how many of its emails are in hand
        self._idle = set()  # groups whose slot is held with none of their mail in hand: to give back
        self._slots_until = None
        self._reserved = {}  # email pk -> (account pk, day): a daily cap's place
        self._refunds = Counter()  # (account pk, day) -> places to give back
        self.pushbacks = {}  # group -> (what the server said, the rate now in force) for the run's report

    # --- the claim's side (the database thread) ------------------------------------------------

    def claimable(self):
        """A filter for the claim: no rows of groups or accounts that must wait (Q() when none must)."""
        now = self.clock()
        with self._lock:
            if self._all_waiting and self._all_waiting > now:
                return Q(pk__in=[])
            groups = sorted(g for g, until in self._waiting.items() if until > now)
            accounts = sorted(a for a, until in self._accounts_waiting.items() if until > now)
        q = Q()
        if groups:
            q &= other_groups(set(groups), self._present_groups(now))
        if accounts:
            q &= ~Q(account_id__in=accounts)
        return q

    def admit(self, candidates):
        """The pks of `candidates` the budgets let through now, in order; the budgets are taken for them.

        `candidates`: (pk, account_id, dest_group, to_address) in queue order, inside the claim's
        transaction. Rows whose group was not stored yet are classified here, and the group of
        those left waiting is written on them so that the next claims pass over them.
        """
        plan = self._plan(candidates)
        admitted = [pk for pk, _, _ in plan.rows] if plan.free else self._grant(plan)
        if self._slots and admitted:
            taken = set(admitted)
            with self._lock:
                for pk, _, group in plan.rows:
                    if pk in taken and group in self._slots and pk not in self._in_hand:
                        self._in_hand[pk] = group
                        self._in_hand_count[group] += 1
                        self._idle.discard(group)
        return admitted

    def admit_one(self, email):
        """The ad-hoc path: whether one email may go now (its group's rate, all mail's, its account's cap).

        No connection slot: one email is not a parallel stream. Its budget, when it needs one, is taken
        in a transaction of its own; a sender then claims it (if another was quicker, the place is lost).
        """
        # What a run reads every REFRESH, one email needs not read at all: its account is at hand, and a
        # group that is paced has its bucket read (and its slowing seen) when the grant is taken.
        account = email.account if email.account_id else None
        self._capped = {account.pk: account} if account is not None and account.daily_cap is not None else {}
        self._refreshed_at = self.clock()
        plan = self._plan([(email.pk, email.account_id, email.dest_group, email.to_address)], slots=False)
        if plan.free:
            return True
        with transaction.atomic():
            return bool(self._grant(plan))

    def _plan(self, candidates, slots=True):
        now = self.clock()
        if slots and not self._started:
            self._start(now)
        if self._refreshed_at is None or now - self._refreshed_at >= REFRESH:
            self._refresh(now)
        rows, unclassified = [], {}
        for pk, account_id, group, address in candidates:
            if not group:
                group = unclassified[pk] = self.groups.of(address)
            rows.append((pk, account_id, group))
        present = {group for _, _, group in rows}
        if slots and self._idle:
            self.release_idle(keep=present)  # a group about to be claimed again keeps its slot
        rates = {g: self._rate(g, now) for g in present}
        paced = {g for g in present if rates[g] > 0}
        if self.per_second > 0:
            rates[ALL] = self.per_second * 60
            paced.add(ALL)
        no_slot = set()
        if slots:
            no_slot = {g for g in present if self.groups[g].max_connections and not self._hold_slot(g, now)}
        day = caps.day_of(now)
        capped = {a: self._capped[a].cap_on(day) for _, a, _ in rows if a in self._capped}
        free = not (paced or no_slot or capped)  # the common path: nothing to count
        return _Plan(now, day, rows, unclassified, rates, paced, no_slot, capped, free)

    def _grant(self, plan):
        now, day, rows, rates, no_slot = plan.now, plan.day, plan.rows, plan.rates, plan.no_slot
        paced, capped, unclassified = plan.paced, plan.capped, plan.unclassified
        locked = buckets.lock({name: self._configured(name) for name in paced}, now) if paced else {}
        left = {}
        for name, bucket in locked.items():
            rate = buckets.refill(bucket, now)  # the database knows best: another host may have slowed it
            if rate > 0:
                left[name], rates[name] = math.floor(bucket.tokens), rate
            if name != ALL and backoff.is_slowed(bucket, now):
                self._buckets[name] = bucket
        places = caps.places_left(capped, day) if capped else {}
        admitted, used, used_places, reserved = [], Counter(), Counter(), {}
        for pk, account_id, group in rows:
            if group in no_slot:
                continue
            if group in left and left[group] - used[group] <= 0:
                continue
            if ALL in left and left[ALL] - used[ALL] <= 0:
                continue
            if account_id in places:
                if places[account_id] - used_places[account_id] <= 0:
                    continue
                used_places[account_id] += 1
                reserved[pk] = (account_id, day)
            admitted.append(pk)
            used[group] += 1
            used[ALL] += 1
        for name, bucket in locked.items():
            bucket.tokens -= used[name]
        if locked:
            buckets.save(locked.values())
        if used_places:
            caps.take(used_places, day)
        self._remember(
            now, {n: b for n, b in locked.items() if n in left}, rates, no_slot, places, used_places, reserved
        )
        # Rows left waiting get their group, so that the next claims pass over them.
        by_group = {}
        for pk, group in unclassified.items():
            by_group.setdefault(group, []).append(pk)
        admitted_set = set(admitted)
        for group, pks in by_group.items():
            waiting = [pk for pk in pks if pk not in admitted_set]
            if waiting:
                TextOfEmail.objects.filter(pk__in=waiting).update(dest_group=group)
        return admitted

    def _remember(self, now, locked, rates, no_slot, places, used_places, reserved):
        """Who must wait after this grant, and until when."""
        with self._lock:
            for name, bucket in locked.items():
                rate = rates[name] / 60  # per second
                # Wait for a second's worth (up to a batch): one claim a second for a paced group, not one an email.
                chunk = max(1.0, min(self.batch_size, rate))
                if bucket.tokens < chunk:
                    until = now + timedelta(seconds=(chunk - bucket.tokens) / rate)
                    if name == ALL:
                        self._all_waiting = until
                    else:
                        self._waiting[name] = max(self._waiting.get(name, until), until)
            for group in no_slot:
                self._waiting[group] = max(self._waiting.get(group, now), now + SLOT_RETRY)
            for account_id, n in places.items():
                if n - used_places[account_id] <= 0:
                    self._accounts_waiting[account_id] = caps.next_day(now)
            self._reserved.update(reserved)

    def _present_groups(self, now):
        """The dest_group values of due mail (PostgreSQL), read again every REFRESH; None elsewhere.

        A value that appears meanwhile (mail made due since) waits for the next read, REFRESH at most.
        """
        if connection.vendor != "postgresql":
            return None
        if self._present is None or now - self._present[0] >= REFRESH:
            quote = connection.ops.quote_name
            sql = _PRESENT_SQL.format(
                table=quote(TextOfEmail._meta.db_table),
                waiting=", ".join(f"'{status}'" for status in states.WAITING),
                sending=states.EmailStatus.SENDING,
            )
            with connection.cursor() as cursor:
                cursor.execute(sql, {"now": now})
                self._present = (now, {row[0] for row in cursor.fetchall()})
        return self._present[1]

    def _start(self, now):
        """Create the buckets and connection slots this run may need (once; cheap when they exist)."""
        configured = {g.name: g.rate_per_minute for g in self.groups if g.paced}
        if self.per_second > 0:
            configured[ALL] = self.per_second * 60
        if configured:
            buckets.ensure(configured, now)
        slots = [ConnectionSlot(group=g.name, slot=n) for g in self.groups for n in range(g.max_connections)]
        if slots:
            ConnectionSlot.objects.bulk_create(slots, ignore_conflicts=True)
        self._started = True

    def _refresh(self, now):
        self._buckets = {b.name: b for b in PacingBucket.objects.filter(slowed_per_minute__isnull=False)}
        self._capped = caps.capped_accounts()
        self._refreshed_at = now

    def _configured(self, name):
        return self.per_second * 60 if name == ALL else self.groups[name].rate_per_minute

    def _rate(self, group, now):
        """A group's rate per minute now, as far as this run knows (0: no limit)."""
        bucket = self._buckets.get(group)
        configured = self._configured(group)
        if bucket is None:
            return configured
        bucket.configured_per_minute = configured
        return backoff.effective_rate(bucket, now)

    def _hold_slot(self, group, now):
        """Whether this run holds (or could just take) one of `group`'s connection slots."""
        lease = timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
        if group in self._slots:
            if self._slots_until - now < lease / 2:
                self._slots_until = now + lease
                ConnectionSlot.objects.filter(holder=self.holder).update(leased_until=self._slots_until)
            return True
        free = (
            ConnectionSlot.objects.select_for_update(skip_locked=True)
            .filter(group=group, slot__lt=self.groups[group].max_connections)
            .filter(Q(holder__isnull=True) | Q(leased_until__lte=now) | Q(holder=self.holder))
            .order_by("slot")
            .first()
        )
        if free is None:
            return False
        self._slots_until = now + lease
        free.holder, free.leased_until = self.holder, self._slots_until
        free.save(update_fields=["holder", "leased_until"])
        ConnectionSlot.objects.filter(holder=self.holder).update(leased_until=self._slots_until)
        self._slots[group] = free.slot
        return True

    # --- the sending side (the SMTP thread) ----------------------------------------------------

    def group_of(self, email):
        return email.dest_group or self.groups.of(email.to_address)

    def holds_back(self, email):
        """Whether a claimed email must be given back untried: its destination just pushed back."""
        if not self._held_back:
            return False
        until = self._held_back.get(self.group_of(email))
        return until is not None and until > self.clock()

    def pushed_back(self, email, outcome):
        """The group of `email` if `outcome` is its destination pushing back (dbmail.send.backoff), else None.

        The rest of that group's claimed mail is given back untried from now on, and no more of it is
        claimed for a while; the caller records the pushback for every host (buckets.push_back).
        """
        if not backoff.is_pushback(outcome):
            return None
        group = self.group_of(email)
        if group == DEFAULT:
            return None
        now = self.clock()
        # The batches already claimed (this one and the next) give the group's mail back; after the pause
        # the shared bucket, which the pushback set below empty, decides.
        hold = now + backoff.HALVING_WINDOW
        with self._lock:
            self._held_back[group] = max(self._held_back.get(group, now), hold)
            self._waiting[group] = max(self._waiting.get(group, now), hold)
        return group

    def record_pushback(self, group, text):
        """Slow `group` down for every host (on the database thread); remembered for the run's report."""
        now = self.clock()
        halved, rate = buckets.push_back(group, self._configured(group), text, now)
        with self._lock:
            self.pushbacks[group] = (text, rate)
        self._refreshed_at = None  # read the new state at the next claim
        return halved

    def counted(self, email, outcome):
        """After an attempt: one that did not count as an attempt gives its daily cap's place back.

        True when that was the last email in hand of a group whose connection slot this run holds:
        the caller has release_idle() run on the database thread, so the slot is free for others now.
        """
        idle = bool(self._in_hand) and self._out_of_hand([email.pk])
        if self._reserved and not outcome.counted:
            with self._lock:
                place = self._reserved.pop(email.pk, None)
                if place:
                    self._refunds[place] += 1
        elif self._reserved:
            self._reserved.pop(email.pk, None)
        return idle

    def _out_of_hand(self, pks):
        """These emails are done with (tried, or given back untried); whether a group was left with none in hand."""
        emptied = False
        with self._lock:
            for pk in pks:
                group = self._in_hand.pop(pk, None)
                if group is None:
                    continue
                self._in_hand_count[group] -= 1
                if self._in_hand_count[group] <= 0:
                    del self._in_hand_count[group]
                    self._idle.add(group)
                    emptied = True
        return emptied

    def release_idle(self, keep=()):
        """Give back the connection slots of the groups this run has no mail of in hand (the database thread).

        `keep`: groups whose mail is being claimed right now. An email of such a group claimed later
        takes a slot again, if one is free.
        """
        with self._lock:
            groups = sorted(g for g in self._idle if g not in keep and g in self._slots and not self._in_hand_count[g])
            self._idle.difference_update(groups)
            for group in groups:
                del self._slots[group]
        if not groups:
            return []
        try:
            ConnectionSlot.objects.filter(holder=self.holder, group__in=groups).update(holder=None, leased_until=None)
        except DatabaseError as exc:
            # Nobody waits for this call: the slots stay leased until finish() or their lease runs out.
            log.warning("could not give back the connection slots of %s: %s", ", ".join(groups), exc)
        return groups

    def give_back(self, pks):
        """Emails claimed and not tried (given back with their batch): their daily cap's places come back."""
        if self._in_hand:
            self._out_of_hand(pks)
        if not self._reserved and not self._refunds:
            return
        with self._lock:
            for pk in pks:
                place = self._reserved.pop(pk, None)
                if place:
                    self._refunds[place] += 1
            refunds, self._refunds = self._refunds, Counter()
        if refunds:
            caps.give_back(refunds)

    # --- between batches -----------------------------------------------------------------------

    def next_chance(self):
        """When a budget this run waits for may let mail through again (a datetime), or None."""
        now = self.clock()
        with self._lock:
            times = [t for t in (*self._waiting.values(), *self._accounts_waiting.values()) if t > now]
            if self._all_waiting and self._all_waiting > now:
                times.append(self._all_waiting)
        return min(times) if times else None

    def mail_waiting(self, due_by):
        """Whether any mail due by `due_by` waits for a budget this run waits for (one query)."""
        if self._idle:
            self.release_idle()  # a run waiting for budget holds no slot it has no mail for
        now = self.clock()
        with self._lock:
            everything = bool(self._all_waiting and self._all_waiting > now)
            groups = [g for g, until in self._waiting.items() if until > now]
            accounts = [a for a, until in self._accounts_waiting.items() if until > now]
        if not (everything or groups or accounts):
            return False
        due = TextOfEmail.objects.filter(status__in=states.WAITING, next_attempt_at__lte=due_by).exclude(
            request_id__in=MessageRequest.objects.filter(status=states.RequestStatus.PAUSED).values("pk")
        )
        due = due.exclude(account_id__in=SenderAccount.objects.filter(active=False).values("pk"))
        if not everything:
            due = due.filter(Q(dest_group__in=groups) | Q(account_id__in=accounts))
        return due.exists()

    def finish(self):
        """At the end of the run: free the connection slots, give back the places not used."""
        self.give_back(list(self._reserved))
        if self._slots:
            ConnectionSlot.objects.filter(holder=self.holder).update(holder=None, leased_until=None)
            self._slots.clear()
        with self._lock:
            self._in_hand.clear()
            self._in_hand_count.clear()
            self._idle.clear()

    def report(self):
        """The run's pushbacks in words (SendResult.problems), one per group."""
        lines = []
        for group, (text, rate) in sorted(self.pushbacks.items()):
            lines.append(
                f"destination {group} pushed back ({text[:200]}): its mail waits, slowed to {rate:,.0f} a minute "
                "for every sender; other destinations go on"
            )
        return lines
