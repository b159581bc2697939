"""The send loop: claim a batch, send each email over one connection, record each answer.

One broken email never stops the rest: whatever goes wrong with one message
becomes that message's outcome (retry.classify), and only an answer about
the recipient drops it.

A failure of the server or of our sender (retry: a "session" fault) is
nobody's recipient's fault. The sender opens a new connection after
DBMAIL_RECONNECT_DELAY_SECONDS, doubling, up to DBMAIL_RECONNECT_TRIES
times in a row, and tries the same email once more (a failure before any
message, such as a refused connection, as often as that allows). When the
faults go on, it gives up on that account's server for the rest of the run:
the remaining emails are deferred without their attempts being counted, and
the problem is reported once (SendResult.problems, and a SendingProblem row
for dbmail_status).

A run tries each email at most once: it claims only what was due when it
started. It holds at most DBMAIL_BATCH_MAX_BYTES of bodies: half for the
batch being sent, half for the next, claimed ahead.
"""

import logging
import time
from dataclasses import dataclass, field, replace
from itertools import groupby

from django.core.mail import get_connection
from django.utils import timezone

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.content import addresses, attachments
from dbmail.models import DeliveryEvent
from dbmail.send import claims, dbworker, message, mime, problems, retry
from dbmail.send.recovery import DATABASE_ERRORS, DatabaseLost, Leftovers

log = logging.getLogger(__name__)
Status = states.EmailStatus


@dataclass
class SendResult:
    sent: int = 0
    deferred: int = 0
    dropped: int = 0
    possibly_delivered: int = 0  # deferred after the message went out and its answer was lost
    connections: int = 0  # connections opened
    connect_failures: int = 0
    errors: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # server or sender failures, in words, one per account and server

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


@dataclass
class _Server:
    """One SMTP server (the site's, or an account's own) and its connection for this run."""

    conn: object
    label: str
    down: retry.Outcome | None = None  # gave up on it: no session could be opened


@dataclass
class _Route:
    """One account's mail through one server: session faults in a row, and what they deferred."""

    account: object
    server: _Server
    faults: int = 0
    down: retry.Outcome | None = None  # gave up: the server or the sender keeps failing
    last_fault: retry.Outcome | None = None
    deferred: int = 0  # emails deferred by session faults this run
    sent: int = 0

    @property
    def label(self):
        who = self.account.address if self.account else "the site's mail"
        return f"{who} via {self.server.label}"


def _needs_smtputf8(email):
    # Nearly every email is ASCII throughout: one check decides.
    if (email.to_address + email.envelope_sender + email.from_header + email.reply_to).isascii():
        return False
    if email.raw_message is not None:
        return addresses.needs_smtputf8(email.to_address) or addresses.needs_smtputf8(email.envelope_sender)
    return (
        addresses.needs_smtputf8(email.to_address)
        or addresses.needs_smtputf8(email.envelope_sender)
        or addresses.header_needs_smtputf8(email.from_header)
        or addresses.header_needs_smtputf8(email.reply_to)
    )


class Sender:
    """Sends claimed batches until everything due at the start was tried once, or a limit is reached."""

    def __init__(
        self,
        batch_size=None,
        max_messages=None,
        max_seconds=None,
        on_outcome=None,
        throttle=None,
        keep_if_down=False,
        scope=None,
        deadline=None,
    ):
        self.batch_size = batch_size or conf.DBMAIL_BATCH_SIZE
        self.max_messages = max_messages
        # `deadline` (time.monotonic()) lets a caller count time it spent before sending.
        self.deadline = deadline or (time.monotonic() + max_seconds if max_seconds else None)
        self.on_outcome = on_outcome
        self.throttle = Throttle(conf.DBMAIL_THROTTLE_PER_SECOND if throttle is None else throttle)
        # keep_if_down: when the server cannot be reached, give the emails back untouched
        # (the ad-hoc path leaves them for the next cron run) instead of deferring them;
        # and no reconnecting with pauses: the caller is waiting.
        self.keep_if_down = keep_if_down
        self.reconnect_tries = 0 if keep_if_down else conf.DBMAIL_RECONNECT_TRIES
        self.scope = scope  # see claims.claim()
        self.started_at = timezone.now()  # what was due by now is this run's work, tried once each
        self.max_bytes = conf.DBMAIL_BATCH_MAX_BYTES
        self.result = SendResult()
        self.stopping = False
        self._servers = {}
        self._routes = {}
        self._held = []  # claims with rows not yet handed back
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
                batch, pending = self._claimed(pending), None
                if not batch.emails and cursor is not None:
                    cursor = None  # rows may have been given back behind the scan: once more from the start
                    batch = self._claimed(self._claim_next(after=None))
                if not batch.emails:
                    break
                cursor = batch.after
                # The next batch is claimed on the database thread while this one is sent.
                pending = self._claim_next(after=cursor, sending=len(batch.emails))
                self.send_claim(batch)
            if pending is not None:
                self._release(self._claimed(pending))
                pending = None
            self._settle_problems()
            self._db.close()  # the last outcomes are committed here (a failure is handled as any other)
            self._db = None
        except DATABASE_ERRORS as exc:
            raise self._lost(exc, pending) from exc
        finally:
            self.close()
        return self.result

    def _claim_next(self, after, sending=0):
        limit = self.batch_size
        if self.max_messages is not None:
            limit = max(0, min(limit, self.max_messages - self.result.attempted - sending))
        return self._db.call(
            claims.claim,
            limit,
            scope=self.scope,
            after=after,
            due_by=self.started_at,
            max_bytes=self.max_bytes // 2,
        )

    def _claimed(self, pending):
        batch = pending.result()
        if batch not in self._held:
            self._held.append(batch)
        return batch

    def _release(self, batch):
        batch.release()
        self._held.remove(batch)

    def _lost(self, exc, pending):
        """The database connection broke: collect what this run still holds, to give back later."""
        leftovers = Leftovers()
        if pending is not None:
            try:
                self._claimed(pending)
            except Exception:  # the claim itself failed: nothing was taken
                pass
        db, self._db = self._db, None
        if db is not None:
            db.close(raise_error=False)
            leftovers.rows.extend(db.unwritten)
        leftovers.claims.extend(self._held)
        self._held = []
        log.info("lost the database connection while sending: %s", exc)
        return DatabaseLost(exc, leftovers)

    def send_claim(self, batch):
        self._db = self._db or dbworker.worker()
        if batch not in self._held:
            self._held.append(batch)
        try:
            for _, emails in groupby(batch.emails, key=lambda e: e.account_id):
                self._send_group(batch, list(emails))
        except DATABASE_ERRORS:
            raise  # the claim is given back once the database answers again (Leftovers)
        except BaseException:
            self._release(batch)
            raise
        self._release(batch)

    # --- servers and routes ---------------------------------------------------------------

    def _server(self, account):
        key = account.pk if account and account.smtp_host else None
        server = self._servers.get(key)
        if server is None:
            conn = get_connection(fail_silently=False, **(account.connection_overrides() if key else {}))
            host = getattr(conn, "host", None)
            label = f"{host}:{conn.port}" if host else type(conn).__name__
            server = self._servers[key] = _Server(conn, label)
        return server

    def _route(self, account):
        key = account.pk if account else None
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = _Route(account, self._server(account))
        return route

    # --- one group of emails (one account) -----------------------------------------------

    def _send_group(self, batch, emails):
        route = self._route(emails[0].account)
        server = route.server
        for email in emails:
            if self._limit_reached():
                return
            down = server.down or route.down
            if down:
                self._finish(batch, email, replace(down, text=f"not tried: {down.text}"), route)
                continue
            batch.renew_if_needed()
            outcome = self._attempt(server, email)
            if outcome.session and outcome.stage in retry.SESSION_STAGES and self.keep_if_down:
                DeliveryEvent.objects.create(
                    email_id=email.pk, kind=DeliveryEvent.Kind.ATTEMPT, outcome=Status.QUEUED, text=outcome.text
                )
                return  # the claim's release puts them back
            outcome = self._after_session_faults(server, route, email, outcome)
            self._finish(batch, email, outcome, route)

    def _after_session_faults(self, server, route, email, outcome):
        """Reconnect and retry after a session fault, with pauses; give up on the route when they go on."""
        retried = False
        while outcome.session:
            route.faults += 1
            route.last_fault = outcome
            if route.faults > self.reconnect_tries:
                route.down = outcome
                if outcome.stage in retry.SESSION_STAGES:
                    server.down = outcome  # no session at all: every account on this server
                return outcome
            # Before any message (connect, EHLO, STARTTLS, AUTH) as often as allowed; within a
            # transaction once per email, which may be the one thing the server dislikes.
            if retried and outcome.stage not in retry.SESSION_STAGES:
                return outcome
            if not self._pause(conf.DBMAIL_RECONNECT_DELAY_SECONDS * 2 ** (route.faults - 1)):
                return outcome
            retried = True
            outcome = self._attempt(server, email)
        route.faults = 0
        return outcome

    def _pause(self, seconds):
        """Sleep before reconnecting; False when the run must stop first (deadline, signal)."""
        until = time.monotonic() + seconds
        if self.deadline and until >= self.deadline:
            return False
        while not self.stopping and time.monotonic() < until:
            time.sleep(min(0.1, max(until - time.monotonic(), 0)))
        return not self.stopping

    def _attempt(self, server, email):
        conn = server.conn
        self._bound_timeout(conn)
        outcome = self._open(server)
        if outcome is None:
            self.throttle.wait()
            outcome = self._send_one(conn, email)
        if outcome.reset_connection:
            # No QUIT: the connection is broken, or the server stalls or is closing.
            (conn.abort if hasattr(conn, "abort") else conn.close)()
        return outcome

    def _bound_timeout(self, conn):
        """Near the deadline, no SMTP read may wait past it (plus a moment for an answer under way)."""
        if not self.deadline:
            return
        left = self.deadline - time.monotonic() + 0.5
        timeout = getattr(conn, "timeout", None)
        if timeout is None or left >= timeout:
            return
        conn.timeout = max(left, 0.05)
        sock = getattr(getattr(conn, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(conn.timeout)

    def _open(self, server):
        """Open the connection if needed; an Outcome when no session can be had."""
        try:
            if server.conn.open():
                self.result.connections += 1
        except Exception as exc:  # any failure to connect defers, never drops
            self.result.connect_failures += 1
            outcome = retry.classify(exc)
            if not outcome.session:  # e.g. a backend's own error type: still not the message's fault
                outcome = retry.session(outcome.code, outcome.text, reset=True, stage="connect")
            opening = "cannot connect to" if outcome.stage == "connect" else "cannot open a session with"
            return replace(outcome, text=f"{opening} {server.label}: {outcome.text}")
        return None

    def _send_one(self, conn, email):
        try:
            files = self._attachments.for_email(email)
            if not hasattr(conn, "send_prepared"):  # another backend (an email service's API, locmem)
                if not message.to_email_message(email, conn, files).send():
                    return retry.Outcome(retry.DROPPED, None, "the email backend sent nothing (no recipient?)")
                return retry.Outcome(retry.SENT, 250, "accepted")
            # Our SMTP backend takes finished bytes: the common email written directly (mime),
            # attachments and raw forwards through Django's EmailMessage (message).
            utf8 = _needs_smtputf8(email) and conn.offers("smtputf8")
            recipient = addresses.wire(email.to_address, utf8)  # an empty address never becomes RCPT TO:<>
            try:
                sender = addresses.wire(email.envelope_sender, utf8) if email.envelope_sender else ""
            except addresses.AddressError as exc:
                return retry.session(None, f"the envelope sender: {exc}", stage="mail")
            data = None if files else mime.compose(email, utf8)
            if data is None:
                data = message.as_bytes(email, files, utf8)
            conn.send_prepared(sender, [recipient], data, smtputf8=utf8)
        except Exception as exc:
            return retry.classify(exc)
        reply = conn.last_reply
        code, text = reply if reply else (250, "accepted")
        return retry.Outcome(retry.SENT, code, text)

    def _finish(self, batch, email, outcome, route):
        outcome = self._db.record(email, batch.token, outcome)
        batch.open_ids.discard(email.pk)
        setattr(self.result, outcome.status, getattr(self.result, outcome.status) + 1)
        if outcome.possibly_delivered:
            self.result.possibly_delivered += 1
        if outcome.session:
            route.deferred += 1
        elif outcome.status == Status.SENT:
            route.sent += 1
        if outcome.status != Status.SENT and not outcome.session and len(self.result.errors) < 20:
            self.result.errors.append(f"{email.to_address}: {outcome.text}")
        if self.on_outcome:
            self.on_outcome(email, outcome)
        # Its bodies are not needed any more: the batch holds only what is still to send.
        email.text = email.html = ""
        email.raw_message = None

    def _settle_problems(self):
        """Report each account and server that failed this run once; clear those that worked."""
        failing = [r for r in self._routes.values() if r.deferred]
        for route in failing:
            fault = route.down or route.last_fault
            who = route.label if route.server.label not in fault.text else route.label.partition(" via ")[0]
            text = f"{who}: {fault.text} ({route.deferred} email{'s' * (route.deferred != 1)} deferred)"
            self.result.problems.append(text)
        if not (failing or (not self.keep_if_down and self._routes)):
            return
        self._db.call(problems.settle, self._routes.values(), resolve=not self.keep_if_down).result()

    def close(self):
        for server in self._servers.values():
            try:
                if server.down and hasattr(server.conn, "abort"):
                    server.conn.abort()
                else:
                    server.conn.close()
            except Exception:  # closing a dead connection must not hide the run's result
                pass
        self._servers.clear()
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
        sender._settle_problems()
    finally:
        sender.close()
    email.refresh_from_db()
    return email
