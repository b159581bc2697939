"""Claim, send, record: the only code that moves an email out of the queue.

A claim takes due rows with SELECT ... FOR UPDATE SKIP LOCKED and marks them
"sending" under this run's token with a lease. Rows whose lease ran out
(their sender died) are due again. Each outcome is committed right after the
server's answer to that message, so a sender killed mid-batch can cause at
most the message in flight to be sent twice. Every write is guarded by the
claim token: a sender that lost its lease can never overwrite another's work.
"""

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import groupby

from django.conf import settings
from django.core.mail import get_connection
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from . import retry
from .message import to_email_message
from .models import DeliveryEvent, TextOfEmail

log = logging.getLogger(__name__)
Status = TextOfEmail.Status


@dataclass
class SendResult:
    sent: int = 0
    deferred: int = 0
    dropped: int = 0
    connections: int = 0  # connections opened
    connect_failures: int = 0
    errors: list = field(default_factory=list)

    @property
    def attempted(self):
        return self.sent + self.deferred + self.dropped

    @property
    def server_unreachable(self):
        """True when every connection attempt failed and nothing went out."""
        return self.connect_failures > 0 and self.connections == 0


class Claim:
    """A batch of rows held by this process under one token."""

    def __init__(self, emails, token, lease_until):
        self.emails = emails
        self.token = token
        self.lease_until = lease_until
        self.open_ids = {e.pk for e in emails}  # claimed and not yet recorded

    def renew_if_needed(self):
        """Extend the lease on the rows still to send when half of it has passed."""
        lease = timedelta(seconds=settings.DBMAIL_LEASE_SECONDS)
        now = timezone.now()
        if self.lease_until - now > lease / 2 or not self.open_ids:
            return
        self.lease_until = now + lease
        TextOfEmail.objects.filter(pk__in=self.open_ids, claim_token=self.token).update(
            leased_until=self.lease_until
        )

    def release(self):
        """Give unsent rows back untouched (a clean stop is not an attempt)."""
        if not self.open_ids:
            return
        for status in (Status.QUEUED, Status.DEFERRED):
            ids = [e.pk for e in self.emails if e.pk in self.open_ids and e.claimed_from == status]
            if ids:
                TextOfEmail.objects.filter(pk__in=ids, claim_token=self.token).update(
                    status=status, claim_token=None, leased_until=None, attempts=F("attempts") - 1
                )
        self.open_ids.clear()


def claim(limit, now=None, scope=None):
    """Claim up to `limit` due emails for this process; returns a Claim (maybe empty).

    `scope` (a Q) restricts the claim to matching rows, due or not: an operator's forced send.
    """
    now = now or timezone.now()
    token = uuid.uuid4()
    lease_until = now + timedelta(seconds=settings.DBMAIL_LEASE_SECONDS)
    with transaction.atomic():
        # Two ordered index scans rather than one OR, so neither sorts the whole queue.
        due = TextOfEmail.objects.select_for_update(skip_locked=True).filter(
            Q(next_attempt_at__lte=now) if scope is None else scope, status__in=TextOfEmail.WAITING
        )
        stale = TextOfEmail.objects.select_for_update(skip_locked=True).filter(
            status=Status.SENDING, leased_until__lte=now
        )
        if scope is not None:
            stale = stale.filter(scope)
        picked = dict(stale.order_by("leased_until").values_list("pk", "status")[:limit])
        if len(picked) < limit:
            picked.update(due.order_by("next_attempt_at", "pk").values_list("pk", "status")[: limit - len(picked)])
        if not picked:
            return Claim([], token, lease_until)
        # Re-checking the state makes this safe where SKIP LOCKED is a no-op (SQLite).
        TextOfEmail.objects.filter(pk__in=list(picked)).filter(
            status__in=[*TextOfEmail.WAITING, Status.SENDING]
        ).exclude(status=Status.SENDING, leased_until__gt=now).update(
            status=Status.SENDING,
            claim_token=token,
            leased_until=lease_until,
            attempts=F("attempts") + 1,
            status_changed_at=now,
        )
    emails = list(TextOfEmail.objects.filter(claim_token=token).select_related("account").order_by("account_id", "pk"))
    for email in emails:
        # A row whose sender died counts as deferred when given back.
        email.claimed_from = picked.get(email.pk) if picked.get(email.pk) != Status.SENDING else Status.DEFERRED
    return Claim(emails, token, lease_until)


def record(email, token, outcome, now=None):
    """Commit one email's outcome and its log row, right after the server's answer."""
    now = now or timezone.now()
    outcome = retry.give_up(outcome, email.attempts, email)
    changes = {
        "status": outcome.status,
        "status_changed_at": now,
        "claim_token": None,
        "leased_until": None,
        "last_error": "" if outcome.status == Status.SENT else outcome.text[:2000],
    }
    if outcome.status == Status.SENT:
        changes["sent_at"] = now
    elif outcome.status == Status.DEFERRED:
        changes["next_attempt_at"] = now + retry.backoff(email.attempts, email)
    with transaction.atomic():
        held = TextOfEmail.objects.filter(pk=email.pk, claim_token=token).update(**changes)
        DeliveryEvent.objects.create(
            email_id=email.pk,
            at=now,
            kind=DeliveryEvent.Kind.ATTEMPT,
            outcome=outcome.status if held else "lost-lease",
            smtp_code=outcome.code,
            text=outcome.text[:2000],
        )
    if not held:
        log.warning("email %s: lease lost before its outcome (%s) was recorded", email.pk, outcome.status)
    return outcome


class Throttle:
    """Caps messages per second for relays with quotas (0 = no cap)."""

    def __init__(self, rate):
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    def wait(self):
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval


class Sender:
    """Sends claimed batches until the queue is empty or a limit is reached."""

    def __init__(
        self, batch_size=None, max_messages=None, max_seconds=None, on_outcome=None, throttle=None, keep_if_down=False,
        scope=None,
    ):
        # keep_if_down: when the server cannot be reached, give the emails back as they were
        # (the ad-hoc path leaves them for the next cron run) instead of deferring them.
        self.keep_if_down = keep_if_down
        self.scope = scope  # see claim()
        self.batch_size = batch_size or settings.DBMAIL_BATCH_SIZE
        self.max_messages = max_messages
        self.deadline = time.monotonic() + max_seconds if max_seconds else None
        self.on_outcome = on_outcome
        self.throttle = Throttle(settings.DBMAIL_THROTTLE_PER_SECOND if throttle is None else throttle)
        self.result = SendResult()
        self.stopping = False
        self._connections = {}

    def _limit_reached(self):
        if self.stopping or (self.deadline and time.monotonic() >= self.deadline):
            return True
        return self.max_messages is not None and self.result.attempted >= self.max_messages

    def run(self):
        try:
            while not self._limit_reached():
                limit = self.batch_size
                if self.max_messages is not None:
                    limit = min(limit, self.max_messages - self.result.attempted)
                batch = claim(limit, scope=self.scope)
                if not batch.emails:
                    break
                self.send_claim(batch)
        finally:
            self.close()
        return self.result

    def send_claim(self, batch):
        try:
            for account_id, emails in groupby(batch.emails, key=lambda e: e.account_id):
                self._send_group(batch, list(emails))
        finally:
            batch.release()

    def _connection(self, account):
        key = account.pk if account and account.smtp_host else None
        conn = self._connections.get(key)
        if conn is None:
            conn = get_connection(fail_silently=False, **(account.connection_overrides() if key else {}))
            self._connections[key] = conn
        return conn

    def _send_group(self, batch, emails):
        conn = self._connection(emails[0].account)
        server_down = None
        for email in emails:
            if self._limit_reached():
                return
            if server_down:
                self._finish(batch, email, server_down)
                continue
            batch.renew_if_needed()
            outcome = self._open(conn)
            if outcome is not None and self.keep_if_down:
                DeliveryEvent.objects.create(
                    email_id=email.pk, kind=DeliveryEvent.Kind.ATTEMPT, outcome=Status.QUEUED, text=outcome.text
                )
                return  # the claim's release puts them back
            if outcome is None:
                self.throttle.wait()
                outcome = self._send_one(conn, email)
            if outcome.reset_connection:
                conn.close()
            if outcome.server_down:
                server_down = outcome
            self._finish(batch, email, outcome)

    def _open(self, conn):
        """Open the connection if needed; an Outcome when the server cannot be reached."""
        try:
            if conn.open():
                self.result.connections += 1
        except Exception as exc:  # any failure to connect defers the batch, never drops it
            self.result.connect_failures += 1
            outcome = retry.classify(exc)
            text = f"cannot connect: {outcome.text}"
            return retry.Outcome("deferred", outcome.code, text, reset_connection=True, server_down=True)
        return None

    def _send_one(self, conn, email):
        try:
            if not to_email_message(email, conn).send():
                return retry.Outcome("dropped", None, "the email backend sent nothing (no recipient?)")
        except Exception as exc:
            return retry.classify(exc)
        reply = getattr(conn, "last_reply", None)
        code, text = reply if reply else (250, "accepted")
        return retry.Outcome("sent", code, text)

    def _finish(self, batch, email, outcome):
        outcome = record(email, batch.token, outcome)
        batch.open_ids.discard(email.pk)
        setattr(self.result, outcome.status, getattr(self.result, outcome.status) + 1)
        if outcome.status != Status.SENT and len(self.result.errors) < 20:
            self.result.errors.append(f"{email.to_address}: {outcome.text}")
        if self.on_outcome:
            self.on_outcome(email, outcome)

    def close(self):
        for conn in self._connections.values():
            try:
                conn.close()
            except Exception:  # closing a dead connection must not hide the run's result
                pass
        self._connections.clear()


def send_due(**kwargs):
    return Sender(**kwargs).run()


def send_one_now(email):
    """Claim one specific queued email and send it at once (the ad-hoc path)."""
    now = timezone.now()
    token = uuid.uuid4()
    lease_until = now + timedelta(seconds=settings.DBMAIL_LEASE_SECONDS)
    taken = TextOfEmail.objects.filter(pk=email.pk, status=Status.QUEUED).update(
        status=Status.SENDING, claim_token=token, leased_until=lease_until, attempts=F("attempts") + 1,
        status_changed_at=now,
    )
    if not taken:
        return None  # someone else (a cron run) has it already
    claimed = TextOfEmail.objects.select_related("account").get(pk=email.pk)
    claimed.claimed_from = Status.QUEUED
    sender = Sender(throttle=0, keep_if_down=True)
    try:
        sender.send_claim(Claim([claimed], token, lease_until))
    finally:
        sender.close()
    email.refresh_from_db()
    return email
