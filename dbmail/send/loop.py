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

Budgets shared by every host (dbmail.send.pacing): a claim takes only the
mail its destination groups, DBMAIL_THROTTLE_PER_SECOND and its sender
accounts' daily caps allow now; the rest waits untouched. When only such
mail is left, the run waits for the next grant if it comes before its
deadline (--max-seconds), or within pacing.MAX_IDLE_WAIT without one, and
otherwise ends. A destination that pushes back (dbmail.send.backoff) is
slowed for every host, and the rest of its claimed mail is given back untried.
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
from dbmail.send import claims, dbworker, message, mime, pacing, problems, retry, takeover
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
        clock=None,
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
        self._ahead = {}  # the next email's prepared message, when its envelope went out ahead
        # `clock` (a callable returning now): the budgets' time, which a test may move (a daily cap's next day).
        self.pacer = pacing.Pacer(self.batch_size, clock=clock)
        self._tokens = takeover.tokens()  # in claim order: a takeover after a crash reads them so

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
                if not batch.emails:
                    self._release(batch)
                    # Only mail over a budget is left: wait for it if it comes soon enough. Then, or when the
                    # scan reached the end, once more from the start: rows may have been given back behind it.
                    if not self._wait_for_budget() and cursor is None:
                        break
                    cursor, pending = None, self._claim_next(after=None)
                    continue
                cursor = batch.after
                # The next batch is claimed on the database thread while this one is sent.
                pending = self._claim_next(after=cursor, sending=len(batch.emails))
                self.send_claim(batch)
            if pending is not None:
                self._release(self._claimed(pending))
                pending = None
            self._settle_problems()
            self._db.call(self.pacer.finish).result()  # the connection slots it held, the places it did not use
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
            pacer=self.pacer,
            token=next(self._tokens),
        )

    def _wait_for_budget(self):
        """Only mail over a budget is left: wait for the next grant if it comes soon enough (True), else False."""
        until = self.pacer.next_chance()
        if until is None:
            return False
        seconds = max(0.0, (until - self.pacer.clock()).total_seconds()) + 0.01
        if not self.deadline and seconds > pacing.MAX_IDLE_WAIT:
            return False  # it waits for a later run
        if not self._db.call(self.pacer.mail_waiting, self.started_at).result():
            return False
        return self._pause(seconds)

    def _claimed(self, pending):
        batch = pending.result()
        if batch not in self._held:
            self._held.append(batch)
        return batch

    def _release(self, batch):
        self.pacer.give_back(batch.open_ids)
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
            self._give_back_held_back(batch)  # a batch claimed ahead of a pushback holds the group's mail too
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
        for i, email in enumerate(emails):
            if self._limit_reached():
                return
            down = server.down or route.down
            if down:
                self._finish(batch, email, replace(down, text=f"not tried: {down.text}"), route)
                continue
            if email.pk not in batch.open_ids or self.pacer.holds_back(email):
                self._forget_ahead(server, email)
                continue  # its destination just pushed back: given back untried, not an attempt
            batch.renew_if_needed()
            following = emails[i + 1] if i + 1 < len(emails) else None
            if following is not None and not (following.pk in batch.open_ids and self._may_pipeline(following)):
                following = None
            outcome = self._attempt(server, email, following)
            pushed_back = self.pacer.pushed_back(email, outcome)
            if pushed_back:
                # That destination's doing, not the server's or the session's: no reconnecting, no giving
                # up on the route; the group is slowed for every host and its other mail waits.
                self._db.call(self.pacer.record_pushback, pushed_back, outcome.text).add_done_callback(_logged)
                self._finish(batch, email, outcome, None)
                self._give_back_held_back(batch)
                continue
            if outcome.session and outcome.stage in retry.SESSION_STAGES and self.keep_if_down:
                DeliveryEvent.objects.create(
                    email_id=email.pk, kind=DeliveryEvent.Kind.ATTEMPT, outcome=Status.QUEUED, text=outcome.text
                )
                return  # the claim's release puts them back
            outcome = self._after_session_faults(server, route, email, outcome)
            self._finish(batch, email, outcome, route)

    def _give_back_held_back(self, batch):
        """Give back the claimed mail of destinations that pushed back now, before more is sent.

        Left "sending" until the batch's end, those rows would stand in the send order before
        rows tried after them, and the takeover after a kill (dbmail.send.takeover) would spend
        its window of possibly delivered rows on them: a duplicate past them would go unmarked.
        Waiting for the database here costs one round trip a pushback, which is rare.
        """
        held = [e.pk for e in batch.emails if e.pk in batch.open_ids and self.pacer.holds_back(e)]
        if held:
            self._db.call(batch.release, held).result()
            self.pacer.give_back(held)

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

    def _forget_ahead(self, server, email):
        """`email` will not be sent now: if its envelope went out ahead, its DATA may be open, so the
        connection is dropped (without QUIT, which would become its content) and the next email opens another."""
        if self._ahead.pop(email.pk, None) is not None:
            (server.conn.abort if hasattr(server.conn, "abort") else server.conn.close)()

    PIPELINE_MARGIN = 2.0  # seconds before the deadline: no envelope sent ahead
    PIPELINE_MAX_BYTES = 1 << 20  # a bigger next message is built in its own turn

    def _may_pipeline(self, following):
        """Whether the next email's envelope may go out with this one's end (it is then sent next, surely).

        Not when the run may stop before it (a limit, a deadline close by, a stop), when messages
        are paced, for the ad-hoc path, nor for a big one (its bytes would be held twice).
        """
        if self.keep_if_down or self.stopping or self.throttle.interval or self.pacer.holds_back(following):
            return False
        if self.max_messages is not None and self.result.attempted + 2 > self.max_messages:
            return False
        if self.deadline and self.deadline - time.monotonic() < self.PIPELINE_MARGIN:
            return False
        size = len(following.text) + len(following.html) + len(following.raw_message or b"")
        return size < self.PIPELINE_MAX_BYTES

    def _attempt(self, server, email, following=None):
        conn = server.conn
        self._bound_timeout(conn)
        outcome = self._open(server)
        if outcome is None:
            self.throttle.wait()
            outcome = self._send_one(conn, email, following)
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
            from dbmail.send.smtp import set_socket_timeout  # here: a run through an API never imports smtplib

            set_socket_timeout(sock, conn.timeout)

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

    def _send_one(self, conn, email, following=None):
        try:
            if not hasattr(conn, "send_prepared"):  # another backend (an email service's API, locmem)
                files = self._attachments.for_email(email)
                if not message.to_email_message(email, conn, files).send():
                    return retry.Outcome(retry.DROPPED, None, "the email backend sent nothing (no recipient?)")
                return retry.Outcome(retry.SENT, 250, "accepted")
            prepared = self._ahead.pop(email.pk, None) or self._prepare(conn, email)
            self._ahead.clear()
            if isinstance(prepared, retry.Outcome):
                return prepared
            then = None
            if following is not None and conn.offers("pipelining"):
                try:
                    ahead = self._prepare(conn, following)
                except Exception:  # its own attempt will meet the same error and record it
                    ahead = None
                if isinstance(ahead, tuple):
                    self._ahead[following.pk] = then = ahead
            sender, recipients, data, utf8 = prepared
            conn.send_prepared(sender, recipients, data, smtputf8=utf8, then=then)
        except DATABASE_ERRORS:
            # Building reads the database (a request's attachments): its loss is no fault of the message,
            # which retry.classify would drop as unbuildable. The run gives back what it holds (Leftovers).
            raise
        except Exception as exc:
            return retry.classify(exc)
        reply = conn.last_reply
        code, text = reply if reply else (250, "accepted")
        return retry.Outcome(retry.SENT, code, text)

    def _prepare(self, conn, email):
        """(envelope sender, [recipient], message bytes, SMTPUTF8?) for our SMTP backend, or the Outcome
        that says why the email cannot go (raises what retry.classify judges)."""
        files = self._attachments.for_email(email)
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
        return sender, [recipient], data, utf8

    def _finish(self, batch, email, outcome, route):
        outcome = self._db.record(email, batch.token, outcome)
        batch.open_ids.discard(email.pk)
        setattr(self.result, outcome.status, getattr(self.result, outcome.status) + 1)
        if outcome.possibly_delivered:
            self.result.possibly_delivered += 1
        if self.pacer.counted(email, outcome):  # its group's last email in hand: free its connection slot now
            self._db.call(self.pacer.release_idle)
        if route is None:
            pass  # a destination's pushback: nothing about the route
        elif outcome.session:
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
        self.result.problems.extend(self.pacer.report())
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


def _logged(future):
    if future.exception() is not None:
        log.warning("could not record a destination's pushback: %s", future.exception())


def send_due(**kwargs):
    return Sender(**kwargs).run()


def send_one_now(email):
    """Send one specific queued email at once (the ad-hoc path); None if a cron run has it."""
    sender = Sender(throttle=0, keep_if_down=True)
    batch = claims.claim_one(email, pacer=sender.pacer)
    if batch is None:
        return None
    sender._db = dbworker.InlineWorker()  # one message: no thread, and the caller sees the result
    try:
        sender.send_claim(batch)
        sender._settle_problems()
    finally:
        sender.close()
    email.refresh_from_db()
    return email
