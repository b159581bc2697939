"""The send loop: claim a batch, send each email over one connection, record each answer.

One broken email never stops the rest: whatever goes wrong with one message
becomes that message's outcome (retry.classify). Only an unreachable server
stops a batch, and then the remaining emails are deferred, never dropped.
"""

import logging
import time
from dataclasses import dataclass, field
from itertools import groupby

from django.core.mail import get_connection

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.content import attachments
from dbmail.models import DeliveryEvent
from dbmail.send import claims, dbworker, mime, retry
from dbmail.send.message import to_email_message

log = logging.getLogger(__name__)
Status = states.EmailStatus


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
        self,
        batch_size=None,
        max_messages=None,
        max_seconds=None,
        on_outcome=None,
        throttle=None,
        keep_if_down=False,
        scope=None,
    ):
        self.batch_size = batch_size or conf.DBMAIL_BATCH_SIZE
        self.max_messages = max_messages
        self.deadline = time.monotonic() + max_seconds if max_seconds else None
        self.on_outcome = on_outcome
        self.throttle = Throttle(conf.DBMAIL_THROTTLE_PER_SECOND if throttle is None else throttle)
        # keep_if_down: when the server cannot be reached, give the emails back untouched
        # (the ad-hoc path leaves them for the next cron run) instead of deferring them.
        self.keep_if_down = keep_if_down
        self.scope = scope  # see claims.claim()
        self.result = SendResult()
        self.stopping = False
        self._connections = {}
        self._db = None  # claims ahead and records behind (dbmail.send.dbworker)
        self._attachments = attachments.Cache()

    def _limit_reached(self):
        if self.stopping or (self.deadline and time.monotonic() >= self.deadline):
            return True
        return self.max_messages is not None and self.result.attempted >= self.max_messages

    def run(self):
        self._db = self._db or dbworker.worker()
        pending, cursor = None, None
        try:
            pending = self._claim_next(after=None)
            while not self._limit_reached():
                batch, pending = pending.result(), None
                if not batch.emails and cursor is not None:
                    cursor = None  # rows may have been given back behind the scan: once more from the start
                    batch = self._claim_next(after=None).result()
                if not batch.emails:
                    break
                cursor = batch.after
                # The next batch is claimed on the database thread while this one is sent.
                pending = self._claim_next(after=cursor, sending=len(batch.emails))
                self.send_claim(batch)
        finally:
            if pending is not None:
                self._release_when_claimed(pending)
            self.close()
        return self.result

    def _claim_next(self, after, sending=0):
        limit = self.batch_size
        if self.max_messages is not None:
            limit = max(0, min(limit, self.max_messages - self.result.attempted - sending))
        return self._db.call(claims.claim, limit, scope=self.scope, after=after)

    def _release_when_claimed(self, pending):
        try:
            pending.result().release()
        except Exception:  # nothing was claimed, or the lease will free it
            pass

    def send_claim(self, batch):
        self._db = self._db or dbworker.worker()
        try:
            for _, emails in groupby(batch.emails, key=lambda e: e.account_id):
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
            return retry.Outcome(retry.DEFERRED, outcome.code, text, reset_connection=True, server_down=True)
        return None

    def _send_one(self, conn, email):
        try:
            # Our SMTP backend takes finished bytes; any other backend, and mail with
            # attachments, gets a Django EmailMessage.
            files = self._attachments.for_email(email)
            data = mime.compose(email) if not files and hasattr(conn, "send_prepared") else None
            if data is not None:
                conn.send_prepared(email.envelope_sender, [email.to_address], data)
            elif not to_email_message(email, conn, files).send():
                return retry.Outcome(retry.DROPPED, None, "the email backend sent nothing (no recipient?)")
        except Exception as exc:
            return retry.classify(exc)
        reply = getattr(conn, "last_reply", None)
        code, text = reply if reply else (250, "accepted")
        return retry.Outcome(retry.SENT, code, text)

    def _finish(self, batch, email, outcome):
        outcome = self._db.record(email, batch.token, outcome)
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
        if self._db is not None:
            db, self._db = self._db, None
            db.close()


def send_due(**kwargs):
    return Sender(**kwargs).run()


def send_one_now(email):
    """Send one specific queued email at once (the ad-hoc path); None if a cron run has it."""
    batch = claims.claim_one(email)
    if batch is None:
        return None
    sender = Sender(throttle=0, keep_if_down=True)
    sender._db = dbworker.InlineWorker()  # one message: no thread, and the caller sees the result
    try:
        sender.send_claim(batch)
    finally:
        sender.close()
    email.refresh_from_db()
    return email
