"""Request -> emails: one rendered TextOfEmail per recipient address.

A request is claimed with a lease (any number of hosts may run this at once),
then its recipients are streamed in chunks. Each chunk's emails and the
checkpoint past them commit in one transaction, so a crash loses at most the
chunk in flight, which the next run redoes from the checkpoint; the unique
(request, lower(to_address)) constraint makes a repeated chunk harmless anyway.
Each address is stored in its delivery spelling (dbmail.content.addresses),
one per mailbox key, so that constraint also stops a second email to a
mailbox spelled differently in another chunk (ann@bücher.example, then
ann@xn--bcher-kva.example).
"""

import json
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, models, transaction
from django.db.models import Q
from django.db.models.sql.subqueries import UpdateQuery
from django.utils import timezone

from dbmail import audit, states
from dbmail.conf import settings as conf
from dbmail.content import headers as header_values
from dbmail.content import recipients, rendering, verp
from dbmail.content import tokens as unsubscribe
from dbmail.content.addresses import delivery_spelling
from dbmail.exceptions import RequestFailed
from dbmail.intake import copyrows
from dbmail.models import AddressToken, AuditEvent, MessageRequest, SenderAccount, TextOfEmail
from dbmail.ops import forks
from dbmail.send import destinations

RequestStatus = states.RequestStatus
log = logging.getLogger(__name__)


@dataclass
class ExpandResult:
    requests: int = 0
    emails: int = 0
    failed: list = field(default_factory=list)  # "#pk: reason" of each request that failed in this run


def claim_request(now=None):
    """Take one due request (or one whose expander died) for this process, or None."""
    now = now or timezone.now()
    lease = timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
    with transaction.atomic():
        # A request of an inactive sender account is held: not expanded until the account is active again.
        # `of` locks the request only; locking the account row would make other expanders skip its requests.
        request = (
            MessageRequest.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                # The sources of states.START_EXPANSION: due, or held under a lease that ran out.
                Q(status=RequestStatus.QUEUED, send_at__lte=now)
                | Q(status=RequestStatus.EXPANDING, expand_lease_until__lte=now)
            )
            .filter(sender_id__in=SenderAccount.objects.filter(active=True).values("pk"))
            .select_related("sender")
            .order_by("send_at", "pk")
            .first()
        )
        if request is None:
            return None
        request.status = states.START_EXPANSION.target
        request.expand_token = uuid.uuid4()
        request.expand_lease_until = now + lease
        request.save(update_fields=["status", "expand_token", "expand_lease_until"])
    return request


# The columns each email has a value of its own for; every other column is the same for a whole chunk.
OWN_COLUMNS = (
    "user_id",
    "to_address",
    "to_name",
    "dest_group",
    "envelope_sender",
    "message_id",
    "headers",
    "subject",
    "text",
    "html",
    "status",
    "last_error",
)


class RowMaker:
    """A request's emails as column values: what they share is worked out once, what differs per recipient.

    `links` collects the unsubscribe tokens issued, for the caller to store
    with the rows (EmailInsert does, in the chunk's transaction).
    """

    def __init__(self, request, compiled, links=None):
        self.compiled = compiled
        self.links = links if links is not None else unsubscribe.LinkMaker()
        sender = request.sender
        self.sender_address = sender.address
        self.verp = verp.enabled()
        self.groups = destinations.current()  # the destination groups (dbmail.send.destinations): set per chunk
        self.message_ids = rendering.MessageIds(sender.address)
        self.feedback_id = header_values.feedback_id(request)  # Gmail's complaint reports, per request
        self.request_values = {
            "request_id": request.pk,
            "account_id": request.sender_id,
            "from_header": sender.from_header,
            "reply_to": request.reply_to,
        }

    def shared(self, now):
        """The values every email of a chunk made at `now` has."""
        return {**self.request_values, "status_changed_at": now, "next_attempt_at": now, "created_at": now}

    def own(self, recipient):
        """This recipient's values (OWN_COLUMNS, in order); a bad address or template makes a dropped row."""
        error = recipient.error
        url, headers = self.links.make(recipient.email) if not error else ("", {})
        headers[header_values.FEEDBACK_ID] = self.feedback_id
        message_id = self.message_ids.new()
        subject = text = html = ""
        if not error:
            try:
                rendered = self.compiled.render(self.compiled.context_for(recipient, url))
            except rendering.RenderLimitExceeded as exc:
                # Over the render budget: the whole request fails (expand), not this row alone; the next
                # recipients would most likely cost the same time and memory for nothing.
                raise rendering.RenderLimitExceeded(f"{exc} (rendering the mail for {recipient.email})") from exc
            except rendering.RenderError as exc:
                error = str(exc)
            else:
                subject, text, html = rendered.subject[:998], rendered.text, rendered.html
        return (
            recipient.user_id,
            # One spelling per mailbox, so the (request, lower(to_address)) constraint also stops another
            # spelling of an address in another chunk, or in a resumed or second expansion.
            delivery_spelling(recipient.email)[:254],
            recipient.name[:200],
            self.groups.of(recipient.email),
            verp.envelope_sender(message_id, self.sender_address) if self.verp else self.sender_address,
            message_id,
            headers,
            subject,
            text,
            html,
            states.REFUSE.target if error else states.ENQUEUE.target,
            error,
        )


def email_fields(request, compiled, recipient, now, links=None, groups=None):
    """One recipient's TextOfEmail as field values; a bad address or template makes it a dropped row.

    `links` collects the unsubscribe tokens issued, for the caller to store
    with the rows; without it (one email: preview, test mail) they are stored here.
    `groups`: the destination groups (dbmail.send.destinations), looked up once per chunk.
    """
    maker = RowMaker(request, compiled, links)
    maker.groups = groups or destinations.current()
    fields = {**maker.shared(now), **dict(zip(OWN_COLUMNS, maker.own(recipient), strict=True))}
    if links is None:
        unsubscribe.register(maker.links.take_issued())
    return fields


def build_email(request, compiled, recipient, now):
    """The unsaved TextOfEmail for one recipient (what the comm panel previews)."""
    return TextOfEmail(**email_fields(request, compiled, recipient, now))


class EmailInsert:
    """One chunk's emails, made ready to insert by the renderer and inserted by the writer.

    `shared`: the values all of them have (RowMaker.shared); `rows`: each one's
    OWN_COLUMNS (RowMaker.own); `tokens`: the (token, address) pairs of the
    unsubscribe links they carry, stored before the emails, so an email never
    exists without its working token: in the same transaction here, or
    committed ahead of it by the tokens' writer (_tokens_first), which then
    empties the list. Emails whose address the request already has are left
    out (a chunk made again).

    On PostgreSQL the rows become COPY text here, in the rendering thread, so
    the writer holds no Python lock while the server works, and a writing
    process (dbmail.intake.writer_process) gets bytes that pickle as they are
    (dbmail.intake.copyrows); elsewhere the ORM's bulk_create inserts them.
    run() inserts them in the caller's transaction; a writer with a connection
    of its own (_commit_aside) uses copy(), then insert_new() after a duplicate.
    """

    def __init__(self, shared, rows, tokens=()):
        self.count = len(rows)
        self.tokens = list(tokens)
        if connection.vendor == "postgresql":
            self.columns, self.data = _copy_lines(shared, rows)
            self.objs = None
        else:
            self.objs = [TextOfEmail(**shared, **dict(zip(OWN_COLUMNS, row, strict=True))) for row in rows]

    def run(self):
        if not self.count:  # every recipient of the chunk was left out (suppressed, repeated)
            return 0
        if self.objs is not None:
            unsubscribe.register(self.tokens)
            return len(TextOfEmail.objects.bulk_create(self.objs, batch_size=500, ignore_conflicts=True))
        if self.tokens:
            _store_tokens(self.tokens)
        return copyrows.copy_new(TextOfEmail._meta.db_table, self.columns, self.data)

    def copy(self):
        """COPY the rows (PostgreSQL, tokens stored already); IntegrityError when one is there already."""
        return copyrows.copy(TextOfEmail._meta.db_table, self.columns, self.data) if self.count else 0

    def insert_new(self):
        """The rows whose address the request does not have yet (a chunk made again)."""
        return copyrows.insert_new(TextOfEmail._meta.db_table, self.columns, self.data) if self.count else 0


def _store_tokens(tokens):
    """Store the (token, address) pairs not stored yet, in the caller's transaction (or as one of its own).

    Most are, from earlier mail to the same people, and cost one index probe each. They go in
    key order: a B-tree takes sorted keys with fewer page visits (about 15 % less here). Each
    column goes as one JSON array: psycopg2 adapts a list element by element (about 1 µs a
    token, holding the interpreter lock), json.dumps is one C call, and PostgreSQL reads JSON
    faster than an array literal too (about 1 µs a token less).
    """
    pairs = sorted(tokens)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {AddressToken._meta.db_table} (token, address, created_at) "
            "SELECT t, a, %s FROM ROWS FROM (json_array_elements_text(%s::json), json_array_elements_text(%s::json)) "
            "AS new (t, a) ON CONFLICT DO NOTHING",
            [timezone.now(), json.dumps([t for t, _ in pairs]), json.dumps([a for _, a in pairs])],
        )


def _copy_lines(shared, rows):
    """(columns, COPY text as bytes) for one chunk: its own columns per row, the shared ones written once."""
    fields = [f for f in TextOfEmail._meta.concrete_fields if not f.primary_key and f.attname not in OWN_COLUMNS]
    columns = [*OWN_COLUMNS, *(f.column for f in fields)]
    tail = "\t".join(
        copyrows.value(shared.get(f.attname, f.get_default()), isinstance(f, models.JSONField)) for f in fields
    )
    text, null, dumps = copyrows.text, copyrows.NULL, copyrows.json_text
    lines = []
    for user_id, to_address, to_name, group, envelope, message_id, headers, subject, body, html, status, error in rows:
        lines.append(
            "\t".join(
                (
                    null if user_id is None else str(user_id),
                    text(to_address),
                    text(to_name),
                    null if group is None else text(group),
                    text(envelope),
                    text(message_id),
                    dumps(headers),
                    text(subject),
                    text(body),
                    text(html),
                    status,
                    text(error),
                    tail,
                )
            )
        )
    lines.append("")
    return columns, "\n".join(lines).encode("utf-8")


class InlineWriter:
    """Commits each chunk before the next is rendered."""

    stopped = False

    def __init__(self, commit):
        self._commit = commit

    def submit(self, last_position, rows):
        self.stopped = not self._commit(last_position, rows)

    def close(self):
        pass


class ChunkWriter:
    """Commits chunks on its own connection while the next chunk is rendered.

    The database's half of the work (inserting and indexing) then costs the
    renderer nothing. Each chunk still commits with its checkpoint in one
    transaction, in order; a stop (cancel, lost lease) or an error ends it.
    With `then`, each chunk this one has committed goes on to that writer
    (the unsubscribe tokens' writer hands its chunks to the emails' writer).
    """

    def __init__(self, commit, then=None, name="dbmail-expand", setup=None):
        self._commit = commit
        self._then = then
        self._setup = setup  # run first on the thread's connection
        self._work = queue.Queue(maxsize=1)
        self._stopped = False
        self.error = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stopped(self):
        return self._stopped or (self._then is not None and self._then.stopped)

    def submit(self, last_position, rows):
        if self.error:
            raise self.error
        self._work.put((last_position, rows))

    def _run(self):
        try:
            if self._setup is not None:
                try:
                    self._setup()
                except BaseException as exc:  # re-raised in the expanding thread
                    self.error = exc
            while (item := self._work.get()) is not None:
                if self.stopped or self.error:
                    continue
                try:
                    self._stopped = not self._commit(*item)
                    if not self._stopped and self._then is not None:
                        self._then.submit(*item)
                except BaseException as exc:  # re-raised in the expanding thread
                    self.error = exc
        finally:
            connection.close()

    def close(self):
        self._work.put(None)
        self._thread.join()
        try:
            if self._then is not None:
                self._then.close()
        finally:
            if self.error:
                raise self.error


def _tokens_first(commit):
    """The writers for PostgreSQL: a chunk's tokens commit on one connection, then its emails on another.

    Storing tokens is about a third of the database's work per email. Done by
    a writer of its own, it runs beside the COPY of the chunk before instead
    of ahead of it. The tokens commit first, so an email still never exists
    without its working token; a crash between the two leaves tokens that no
    email carries yet, which is harmless (a token only names the address it
    was made for, and the chunk made again stores it again as a no-op).
    Both connections stay in autocommit: the tokens' INSERT is a transaction
    by itself, and the emails' writer spells its transaction out (_commit_aside).
    """

    def store_tokens(last_position, emails):
        if emails.tokens:
            _store_tokens(emails.tokens)  # one statement: its own transaction
            emails.tokens = []  # stored: the emails' writer has nothing more to do for them
        return True

    emails = ChunkWriter(commit, setup=_session_without_flush)
    return ChunkWriter(store_tokens, then=emails, name="dbmail-expand-tokens", setup=_session_without_flush)


def _commit_without_flush():
    """With DBMAIL_ASYNC_COMMIT, this transaction's commit does not wait for the WAL flush.

    Safe for a chunk: a sender's claim commits with the flush, and WAL is flushed in order, so any
    email a sender has taken is on disk; a crash of the PostgreSQL server can forget only chunks
    nobody took yet, together with their checkpoint, and the next expansion makes them again.
    """
    if conf.DBMAIL_ASYNC_COMMIT and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _session_without_flush():
    """_commit_without_flush for every commit of a writer's own connection (it writes nothing but chunks)."""
    if conf.DBMAIL_ASYNC_COMMIT:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO OFF")


def _checkpoint_update(mine, last_position, lease_until):
    """The UPDATE (SQL, params) that moves the request's checkpoint past a chunk and renews the lease.

    A chunk's transaction starts with it: it locks the request, so a cancel
    waits for the chunk, then wins; it matches no row once the request is no
    longer this expander's (cancelled, or taken over), and the chunk is then
    not written.
    """
    query = mine.query.chain(UpdateQuery)
    query.add_update_values({"checkpoint": {"after": last_position}, "expand_lease_until": lease_until})
    return query.get_compiler(connection=connection).as_sql()


def _commit_aside(update, emails):
    """One chunk's transaction on a writer's own connection (in autocommit), in three round trips; False if not ours.

    BEGIN and the checkpoint's UPDATE, the COPY, COMMIT. Django's atomic()
    would take eight (autocommit off, BEGIN, SET LOCAL, the UPDATE, a
    savepoint, the COPY, its release, COMMIT, autocommit on), and after each
    the writer thread waits to take the interpreter lock back from the
    renderer, up to sys.getswitchinterval() (5 ms): the emails' writer spent
    as long on those as on the COPY, and it is the slowest stage. A duplicate
    (a chunk made again) rolls the COPY back; the chunk then goes in again in
    a new transaction, without the rows already there.
    """
    sql, params = update
    with connection.cursor() as cursor:
        cursor.execute("BEGIN; " + sql, params)  # the UPDATE's row count is the last statement's
        done = False
        try:
            if cursor.rowcount != 1:
                return False
            try:
                emails.copy()
            except IntegrityError:
                cursor.execute("ROLLBACK; BEGIN; " + sql, params)
                if cursor.rowcount != 1:
                    return False
                emails.insert_new()
            cursor.execute("COMMIT")
            done = True
        finally:
            if not done:
                try:
                    cursor.execute("ROLLBACK")
                except DatabaseError:  # the connection is gone: the error in hand says why
                    pass
    return True


def _writer(commit, commit_aside, on_chunk):
    """Who writes the chunks: the renderer itself (in a transaction, or not on PostgreSQL), else the two
    writers on connections of their own, in a forked process (DBMAIL_EXPAND_WRITER, where the system
    can fork and this process has no other thread) or as threads.

    `commit` is for the caller's transaction (it calls on_chunk itself), `commit_aside` for a
    writer's own connection (on_chunk is called here, or in the parent for a process).
    """
    if not _can_write_aside():
        return InlineWriter(commit)
    # Forked only from a process with no other thread (dbmail_cron's is one): see dbmail.ops.forks.alone.
    if conf.DBMAIL_EXPAND_WRITER == "process" and hasattr(os, "fork") and forks.alone():
        from dbmail.intake.writer_process import WriterProcess

        try:
            return WriterProcess(_tokens_first, commit_aside, on_chunk)
        except OSError as exc:  # no more processes (EAGAIN, ENOMEM): this process writes with threads
            log.warning("dbmail: cannot fork the expansion's writer (%s); writing from threads", exc)

    def commit_reported(last_position, emails):
        if not commit_aside(last_position, emails):
            return False
        if on_chunk:
            on_chunk(emails.count)
        return True

    return _tokens_first(commit_reported)


def _can_write_aside():
    # Another connection cannot see rows of a transaction still open here (e.g. a caller's atomic block).
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def _mine(request):
    """The request as long as this expander still holds it (same token, still expanding)."""
    return MessageRequest.objects.filter(
        pk=request.pk, expand_token=request.expand_token, status=RequestStatus.EXPANDING
    )


def expand(request, chunk_size=None, on_chunk=None, deadline=None):
    """Expand a claimed request to the end; return the number of emails it now has.

    Stops early, leaving the rest to whoever holds the request, if it was
    cancelled or its lease was taken over meanwhile. At `deadline`
    (time.monotonic()) it stops after the chunk in hand and gives the request
    back at once: the next run goes on from its checkpoint. Any error that is the
    request's own (its recipient set, its parameters, its templates, a bug
    they trigger) marks it failed, with the reason in words, and raises
    RequestFailed; emails already made from it stay and are sent. Only the
    database being unreachable propagates as it is: the lease hands the
    request to the next run.
    """
    try:
        return _expand(request, chunk_size, on_chunk, deadline)
    except (OperationalError, InterfaceError):
        raise
    except RequestFailed:
        raise
    except Exception as exc:
        reason = _reason(exc)
        # dbmail_cron reports the failure in words; a bug's traceback goes to the request's history and the log.
        trace = "" if isinstance(exc, _IN_WORDS) else traceback.format_exc()[-4000:]
        log.info("dbmail: request %s failed: %s", request.pk, reason, exc_info=bool(trace))
        if fail(request, reason, trace):
            raise RequestFailed(request.pk, reason) from exc
        return 0  # no longer ours (cancelled, or taken over): its holder decides


# Errors whose message says all there is to say; any other (a recipient set's bug included) keeps its traceback.
_IN_WORDS = (recipients.UnknownRecipientSet, rendering.RenderError)


def _reason(exc):
    if isinstance(exc, recipients.UnknownRecipientSet):
        return f"{exc} (the set was removed from the code or renamed)"
    if isinstance(exc, (recipients.RecipientSetError, rendering.RenderError)):
        return str(exc)
    return f"expansion failed: {type(exc).__name__}: {exc}"


def obvious_problem(request):
    """What would fail the request again before any recipient is read (set gone, bad templates), or ""."""
    try:
        recipients.get_set(request.recipient_set)
        if request.recipient_params is not None and not isinstance(request.recipient_params, dict):
            return "the recipient parameters must be a JSON object"
        rendering.CompiledRequest(request)
        over_budget = rendering.budget_errors(request)
    except Exception as exc:  # whatever it is, it is the request's: say it instead of failing the page
        return _reason(exc)
    return next(iter(over_budget.values()), "")


def fail(request, reason, trace=""):
    """Mark a request this expander holds as failed with `reason`; False if it is not held any more."""
    now = timezone.now()
    with transaction.atomic():
        failed = states.FAIL_EXPANSION.update(
            _mine(request),
            failure=reason[:5000],
            failed_at=now,
            expand_token=None,
            expand_lease_until=None,
        )
        if failed:
            text = f"{reason}\n\n{trace}" if trace else reason
            audit.program_step(audit.CRON, AuditEvent.Kind.FAILURE, request, text, at=now)
    return bool(failed)


def _expand(request, chunk_size=None, on_chunk=None, deadline=None):
    chunk_size = chunk_size or conf.DBMAIL_EXPAND_CHUNK
    lease = timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
    mine = _mine(request)
    after = (request.checkpoint or {}).get("after")
    compiled = rendering.CompiledRequest(request)  # a template error fails the request (see expand)

    def commit(last_position, emails):
        """A chunk and its checkpoint in the caller's transaction (under a savepoint) or one of their own."""
        sql, params = _checkpoint_update(mine, last_position, timezone.now() + lease)
        with transaction.atomic():
            _commit_without_flush()
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                if cursor.rowcount != 1:
                    return False
            emails.run()
        if on_chunk:
            on_chunk(emails.count)
        return True

    def commit_aside(last_position, emails):
        return _commit_aside(_checkpoint_update(mine, last_position, timezone.now() + lease), emails)

    # A small first chunk: the writer starts inserting while the renderer is still warming up.
    chunks = recipients.iter_recipients(
        request.recipient_set, request.recipient_params, after, chunk_size, first_chunk_size=min(chunk_size, 200)
    )
    links = unsubscribe.LinkMaker()
    maker = RowMaker(request, compiled, links)
    writer = _writer(commit, commit_aside, on_chunk)
    paused = False
    try:
        for last_position, chunk in chunks:
            if writer.stopped:
                break
            if deadline is not None and time.monotonic() >= deadline:
                paused = True
                break
            maker.groups = destinations.current()  # looked up once per chunk
            rows = [maker.own(rcpt) for rcpt in chunk]
            writer.submit(last_position, EmailInsert(maker.shared(timezone.now()), rows, links.take_issued()))
    finally:
        writer.close()
    if writer.stopped:
        return 0
    if paused:
        mine.update(expand_lease_until=timezone.now())
        return 0

    total = request.emails.count()
    states.FINISH_EXPANSION.update(
        mine,
        recipient_count=total,
        expanded_at=timezone.now(),
        expand_token=None,
        expand_lease_until=None,
    )
    return total


def expand_due(max_requests=None, on_chunk=None, deadline=None):
    """Expand every due request, one at a time, until `deadline` (time.monotonic()); return what was done."""
    result = ExpandResult()
    while max_requests is None or result.requests < max_requests:
        if deadline is not None and time.monotonic() >= deadline:
            break
        request = claim_request()
        if request is None:
            break
        result.requests += 1
        try:
            result.emails += expand(request, on_chunk=on_chunk, deadline=deadline)
        except RequestFailed as exc:  # that request alone: the others are expanded in this same run
            result.failed.append(f"#{exc.request_id}: {exc.reason}")
    return result
