"""Request -> emails: one rendered TextOfEmail per recipient address.

A request is claimed with a lease (any number of hosts may run this at once),
then its recipients are streamed in chunks. Each chunk's emails and the
checkpoint past them commit in one transaction, so a crash loses at most the
chunk in flight, which the next run redoes from the checkpoint; the unique
(request, address) constraint makes a repeated chunk harmless anyway.
"""

import logging
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import InterfaceError, OperationalError, connection, models, transaction
from django.db.models import Q
from django.utils import timezone
from psycopg2.extras import Json

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.content import headers as header_values
from dbmail.content import recipients, rendering, verp
from dbmail.content import tokens as unsubscribe
from dbmail.exceptions import RequestFailed
from dbmail.models import AddressToken, MessageRequest, RequestEvent, SenderAccount, TextOfEmail

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


def email_fields(request, compiled, recipient, now, links=None):
    """One recipient's TextOfEmail as field values; a bad address or template makes it a dropped row.

    `links` collects the unsubscribe tokens issued, for the caller to store
    with the rows; without it (one email: preview, test mail) they are stored here.
    """
    maker = links or unsubscribe.LinkMaker()
    url, headers = maker.make(recipient.email) if not recipient.error else ("", {})
    headers[header_values.FEEDBACK_ID] = header_values.feedback_id(request)  # Gmail's complaint reports, per request
    message_id = rendering.new_message_id(request.sender.address)
    fields = {
        "request_id": request.pk,
        "account_id": request.sender_id,
        "user_id": recipient.user_id,
        "to_address": recipient.email[:254],
        "to_name": recipient.name[:200],
        "from_header": request.sender.from_header,
        "envelope_sender": verp.envelope_sender(message_id, request.sender.address),
        "reply_to": request.reply_to,
        "message_id": message_id,
        "headers": headers,
        "status": states.ENQUEUE.target,
        "status_changed_at": now,
        "next_attempt_at": now,
        "created_at": now,
    }
    error = recipient.error
    if not error:
        try:
            rendered = compiled.render(compiled.context_for(recipient, url))
        except rendering.RenderError as exc:
            error = str(exc)
        else:
            fields.update(subject=rendered.subject[:998], text=rendered.text, html=rendered.html)
    if error:
        fields.update(status=states.REFUSE.target, last_error=error)
    if links is None:
        unsubscribe.register(maker.take_issued())
    return fields


def build_email(request, compiled, recipient, now):
    """The unsaved TextOfEmail for one recipient (what the comm panel previews)."""
    return TextOfEmail(**email_fields(request, compiled, recipient, now))


class EmailInsert:
    """One chunk's emails, made ready to insert by the renderer and inserted by the writer.

    Emails whose address the request already has are left out (a repeated
    chunk). On PostgreSQL the statement text is built here, in the rendering
    thread, so the writer thread holds no Python lock while the server works:
    the ORM's bulk_create would spend ~150 µs a row preparing values, and
    expansion must do 10,000 a second. The unsubscribe tokens the emails
    carry (`tokens`: (token, address) pairs) are stored in the same
    statement, so an email never exists without its working token.
    """

    def __init__(self, rows, tokens=()):
        self.count = len(rows)
        self.tokens = list(tokens)
        self.rows = rows if connection.vendor != "postgresql" else None
        self.sql = _insert_sql(rows, self.tokens) if self.rows is None and rows else None

    def run(self):
        if not self.count:  # every recipient of the chunk was left out (suppressed, repeated)
            return
        if self.sql is None:
            unsubscribe.register(self.tokens)
            objs = [TextOfEmail(**row) for row in self.rows]
            TextOfEmail.objects.bulk_create(objs, batch_size=500, ignore_conflicts=True)
            return
        with connection.cursor() as cursor:
            cursor.execute(self.sql)


def _insert_sql(rows, tokens=()):
    fields = [f for f in TextOfEmail._meta.concrete_fields if not f.primary_key]
    defaults = {f.attname: f.get_default() for f in fields}
    json_fields = {f.attname for f in fields if isinstance(f, models.JSONField)}
    names = [f.attname for f in fields]
    row_template = "(" + ", ".join(["%s"] * len(fields)) + ")"
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    table = connection.ops.quote_name(TextOfEmail._meta.db_table)
    params = [
        Json(row.get(n, defaults[n])) if n in json_fields else row.get(n, defaults[n]) for row in rows for n in names
    ]
    with connection.cursor() as cursor:
        values = cursor.cursor.mogrify(",".join([row_template] * len(rows)), params)
        prefix = _token_sql(cursor, tokens)
    return prefix + b"INSERT INTO %s (%s) VALUES %s ON CONFLICT DO NOTHING" % (table.encode(), columns.encode(), values)


def _token_sql(cursor, tokens):
    if not tokens:
        return b""
    now = timezone.now()
    table = connection.ops.quote_name(AddressToken._meta.db_table).encode()
    values = cursor.cursor.mogrify(
        ",".join(["(%s, %s, %s)"] * len(tokens)), [v for t, a in tokens for v in (t, a, now)]
    )
    return b"INSERT INTO %s (token, address, created_at) VALUES %s ON CONFLICT DO NOTHING; " % (table, values)


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
    """

    def __init__(self, commit):
        self._commit = commit
        self._work = queue.Queue(maxsize=1)
        self.stopped = False
        self.error = None
        self._thread = threading.Thread(target=self._run, name="dbmail-expand", daemon=True)
        self._thread.start()

    def submit(self, last_position, rows):
        if self.error:
            raise self.error
        self._work.put((last_position, rows))

    def _run(self):
        try:
            while (item := self._work.get()) is not None:
                if self.stopped or self.error:
                    continue
                try:
                    self.stopped = not self._commit(*item)
                except BaseException as exc:  # re-raised in the expanding thread
                    self.error = exc
        finally:
            connection.close()

    def close(self):
        self._work.put(None)
        self._thread.join()
        if self.error:
            raise self.error


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
    except Exception as exc:  # whatever it is, it is the request's: say it instead of failing the page
        return _reason(exc)
    return ""


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
            RequestEvent.objects.create(request_id=request.pk, at=now, kind=RequestEvent.Kind.FAILURE, text=text)
    return bool(failed)


def _expand(request, chunk_size=None, on_chunk=None, deadline=None):
    chunk_size = chunk_size or conf.DBMAIL_EXPAND_CHUNK
    lease = timedelta(seconds=conf.DBMAIL_LEASE_SECONDS)
    mine = _mine(request)
    after = (request.checkpoint or {}).get("after")
    compiled = rendering.CompiledRequest(request)  # a template error fails the request (see expand)

    def commit(last_position, emails):
        now = timezone.now()
        with transaction.atomic():
            # Updating the request first locks it: a cancel waits for this chunk, then wins.
            if not mine.update(checkpoint={"after": last_position}, expand_lease_until=now + lease):
                return False
            emails.run()
        if on_chunk:
            on_chunk(emails.count)
        return True

    # A small first chunk: the writer starts inserting while the renderer is still warming up.
    chunks = recipients.iter_recipients(
        request.recipient_set, request.recipient_params, after, chunk_size, first_chunk_size=min(chunk_size, 200)
    )
    links = unsubscribe.LinkMaker()
    writer = ChunkWriter(commit) if _can_write_aside() else InlineWriter(commit)
    paused = False
    try:
        for last_position, chunk in chunks:
            if writer.stopped:
                break
            if deadline is not None and time.monotonic() >= deadline:
                paused = True
                break
            now = timezone.now()
            rows = [email_fields(request, compiled, rcpt, now, links) for rcpt in chunk]
            writer.submit(last_position, EmailInsert(rows, links.take_issued()))
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
