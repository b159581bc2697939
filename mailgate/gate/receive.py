"""The pipe entry: one message from the MTA in, one sysexits code out.

    store raw bytes -> parse -> complaint report? -> bounce? -> route -> policy -> forward

The raw bytes are committed before anything else is attempted, so whatever
happens next the mail is kept. While `main` runs, the only thing written to
the MTA is the gate's own one-line answer and one line per log record:
tracebacks and stray output of libraries never reach the MTA's log. Exit codes are the only language the MTA
understands, and any code not listed here makes Postfix and Exim bounce the
mail permanently, so `run` never raises:

    0   accepted: forwarded, held, stored as a bounce or a complaint report, or refused with a notice
    65  over MAILGATE_MAX_BYTES (the MTA bounces it with our message)
    67  no list matches the recipient (the MTA bounces "unknown user")
    75  temporary failure: the database cannot be reached, a required setting
        is missing; nothing was kept, the MTA keeps the mail and retries
    77  refused by the list's posting policy, with MAILGATE_REFUSE_AT_SMTP on:
        the message is kept (status refused) and the MTA bounces it itself
        instead of the gate sending a notice (docs: "Refusals and backscatter")

A failure after the bytes are stored (a bug, a broken resolver) is logged,
the message gets status "failed" with the traceback in its note, and the gate
answers 0: the mail is safe in the database and the admin can process it
again; a retrying MTA would only store it twice. A database error at that
point answers 75, since processing never committed: the MTA's retry is
processed afresh and this copy stays "failed".
"""

import io
import logging
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import DatabaseError, transaction

from dbmail.track.queue import QueueUnavailable
from mailgate import health as gate_health
from mailgate.conf import settings as conf
from mailgate.gate import bounces, complaints, forward, parsing, policy, routing
from mailgate.gate import unsubscribe_mail as unsubscribe
from mailgate.models import InboundMessage

log = logging.getLogger(__name__)

EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, EX_NOPERM = 0, 65, 67, 75, 77
EXIT_CODES = (EX_OK, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, EX_NOPERM)
_HEADERS_KEPT_WHEN_TOO_BIG = 64 * 1024


@dataclass
class Result:
    code: int
    message: str
    inbound_id: int | None = None


def read_limited(stream, limit):
    """Up to limit + 1 bytes from a binary stream (one more than allowed tells us it is too big)."""
    chunks, total = [], 0
    while total <= limit:
        chunk = stream.read(min(1 << 16, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def drain(stream):
    """Read the rest of an oversized message (so the MTA sees no broken pipe); returns how many bytes."""
    total = 0
    try:
        while chunk := stream.read(1 << 16):
            total += len(chunk)
    except (OSError, ValueError):
        pass
    return total


def run(raw, recipient, sender="", size=None):
    """Take one message; returns a Result whose code is one of EXIT_CODES. Never raises.

    `size` is the full size when `raw` is only the start of an oversized message.
    """
    try:
        return _run(raw, recipient, sender, len(raw) if size is None else size)
    except DatabaseError as exc:
        log.error("mailgate: database error, asking the MTA to retry: %s", exc)
        return Result(EX_TEMPFAIL, f"temporary failure (database): {exc}".strip())
    except Exception as exc:  # last resort: never a traceback with exit 1 (a permanent bounce)
        log.exception("mailgate: unexpected error before the message was stored")
        return Result(EX_TEMPFAIL, f"temporary failure: {type(exc).__name__}: {exc}")


def _run(raw, recipient, sender, size):
    recipient = routing.normalise_recipient(parsing.clean_text(recipient))
    sender = "" if parsing.is_null_sender(sender) else parsing.clean_text(sender).strip().strip("<>")
    if "@" not in recipient:
        return Result(EX_TEMPFAIL, "no envelope recipient given (--recipient, RECIPIENT or LOCAL_PART/DOMAIN)")

    too_big = size > conf.MAILGATE_MAX_BYTES
    inbound = InboundMessage.objects.create(
        envelope_sender=sender[:254],
        envelope_recipient=recipient[:254],
        raw=raw[:_HEADERS_KEPT_WHEN_TOO_BIG] if too_big else raw,
        size=min(size, 2**31 - 1),
        status=InboundMessage.Status.TOO_BIG if too_big else InboundMessage.Status.RAW,
        note=f"over the limit of {conf.MAILGATE_MAX_BYTES} bytes; only the start is kept" if too_big else "",
    )
    if too_big:
        return Result(
            EX_DATAERR,
            f"message too large: over the limit of {conf.MAILGATE_MAX_BYTES} bytes for {recipient}",
            inbound.pk,
        )
    try:
        return process(inbound)
    except (DatabaseError, QueueUnavailable) as exc:
        # Nothing was forwarded (processing is one transaction); the MTA retries and this copy stays as "failed".
        log.error("mailgate: database error processing inbound message %s; the MTA retries: %s", inbound.pk, exc)
        _try_mark(inbound, InboundMessage.Status.FAILED, f"database error; the MTA was asked to retry: {exc}")
        return Result(EX_TEMPFAIL, f"temporary failure (database): {exc}".strip(), inbound.pk)
    except Exception:
        log.exception("mailgate: failed to process inbound message %s (kept)", inbound.pk)
        note = "processing failed; the message is kept and can be processed again:\n" + traceback.format_exc()
        _mark(inbound, InboundMessage.Status.FAILED, note[-5000:])
        return Result(EX_OK, f"accepted (kept as #{inbound.pk}; processing failed)", inbound.pk)


def process(inbound):
    """Parse, classify and route a stored message; the admin's "process again" calls this too.

    One transaction: a failure part-way leaves the stored row as it was, with
    nothing queued, for the caller to mark.
    """
    with transaction.atomic():
        parsed = parsing.parse(inbound.raw)
        if parsed.ok:
            inbound.message_id, inbound.from_header, inbound.subject = (
                parsed.message_id,
                parsed.from_header,
                parsed.subject,
            )
            defects = parsed.error and f"parsed with defects: {parsed.error}"
            inbound.note = "; ".join(note for note in (parsed.incomplete, defects) if note)
            inbound.status = InboundMessage.Status.RECEIVED
            inbound.save(update_fields=["message_id", "from_header", "subject", "note", "status"])
        else:
            _mark(inbound, InboundMessage.Status.RAW, f"cannot be parsed: {parsed.error}")

        is_verp, email = bounces.verp_email(inbound.envelope_recipient)
        # A complaint report first, wherever reports arrive: read as a bounce, its text could pass for one.
        report_address = (
            is_verp or not inbound.envelope_sender or complaints.is_complaint_address(inbound.envelope_recipient)
        )
        if report_address and complaints.is_report(parsed):
            row = complaints.handle(inbound, parsed)
            complaints.mark(inbound, row)
            return Result(EX_OK, f"complaint report stored ({'applied' if row.applied else 'not applied'})", inbound.pk)

        null_sender_report = not inbound.envelope_sender and bounces.looks_like_bounce(parsed)
        if is_verp or null_sender_report:
            rows = bounces.handle(inbound, parsed, verp_email=email, trust_message_ids=not is_verp)
            bounces.mark_bounce(inbound, rows)
            return Result(EX_OK, f"bounce stored ({len(rows)} finding(s))", inbound.pk)

        if unsubscribe.is_unsubscribe_address(inbound.envelope_recipient):
            note = unsubscribe.handle(inbound, parsed)
            _mark(inbound, inbound.status, note)
            return Result(EX_OK, note, inbound.pk)

        route = routing.route(inbound.envelope_recipient)
        if route is None:
            return _no_list(inbound, parsed)
        InboundMessage.objects.filter(pk=inbound.pk).update(email_list=route.email_list, match_groups=route.groups)
        inbound.email_list = route.email_list
        if not parsed.ok:
            return Result(EX_OK, f"accepted and kept unparsed as #{inbound.pk}", inbound.pk)

        decision = policy.decide(parsed, route, inbound.envelope_sender)
        if decision.action == policy.LOOP:
            _mark(inbound, InboundMessage.Status.LOOP, f"not forwarded: {decision.reason}")
            return Result(EX_OK, "accepted (not forwarded: loop or automatic mail)", inbound.pk)
        if decision.action == policy.HOLD:
            _mark(inbound, InboundMessage.Status.HELD, decision.note)
            return Result(EX_OK, "accepted and held for moderation", inbound.pk)
        if decision.action == policy.REFUSE:
            if conf.MAILGATE_REFUSE_AT_SMTP:  # the MTA tells the sender, in its own bounce
                _mark(inbound, InboundMessage.Status.REFUSED, f"{decision.note} (refused to the MTA, exit 77)")
                return Result(EX_NOPERM, f"refused: {decision.reason}", inbound.pk)
            sent = policy.notice_refused(inbound, parsed, decision.reason)
            _mark(inbound, InboundMessage.Status.REFUSED, decision.note + ("" if sent else " (no notice sent)"))
            return Result(EX_OK, f"accepted; not forwarded: {decision.reason}", inbound.pk)
        return deliver(inbound, parsed, route, decision.note)


def deliver(inbound, parsed, route, why=""):
    """Forward to the members; `why` (the policy's reason: who posted, how proven) is added to the note."""
    count = forward.forward(inbound, parsed, route)
    note = "; ".join(part for part in (why, inbound.note) if part)[:5000]
    InboundMessage.objects.filter(pk=inbound.pk).update(
        status=InboundMessage.Status.FORWARDED, forwarded_count=count, note=note
    )
    inbound.status, inbound.forwarded_count, inbound.note = InboundMessage.Status.FORWARDED, count, note
    return Result(EX_OK, f"forwarded to {count} member(s)", inbound.pk)


def _no_list(inbound, parsed):
    if complaints.is_complaint_address(inbound.envelope_recipient):
        # Not a report (a feedback loop's sign-up confirmation, a person): kept for staff, never bounced.
        _mark(inbound, inbound.status, "sent to a complaint address, not a complaint report")
        return Result(EX_OK, "accepted (complaint address; not a complaint report)", inbound.pk)
    if conf.MAILGATE_UNKNOWN_RECIPIENT == "notice" and not conf.MAILGATE_REFUSE_AT_SMTP:
        sent = policy.notice_no_such_list(inbound, parsed)
        _mark(inbound, InboundMessage.Status.NO_LIST, "no list matches" + ("" if sent else " (no notice sent)"))
        return Result(EX_OK, "accepted; no such list (notice)", inbound.pk)
    _mark(inbound, InboundMessage.Status.NO_LIST, "no list matches; the MTA bounces it")
    return Result(EX_NOUSER, f"no such list: {inbound.envelope_recipient}", inbound.pk)


def _mark(inbound, status, note):
    note = parsing.clean_text(note)
    InboundMessage.objects.filter(pk=inbound.pk).update(status=status, note=note[:5000])
    inbound.status, inbound.note = status, note[:5000]


def _try_mark(inbound, status, note):
    try:
        _mark(inbound, status, note)
    except DatabaseError:  # the database is gone: the row keeps its earlier status
        pass


def reprocess(inbound):
    """Run a stored message through the gate again (admin action for raw/failed messages)."""
    inbound.refresh_from_db()
    try:
        return process(inbound)
    except (DatabaseError, QueueUnavailable) as exc:
        return Result(EX_TEMPFAIL, f"database or tracking queue error, nothing changed: {exc}", inbound.pk)
    except Exception:
        _mark(inbound, InboundMessage.Status.FAILED, ("processing failed again:\n" + traceback.format_exc())[-5000:])
        return Result(EX_OK, "processing failed again", inbound.pk)


def envelope_from_environment(environ, recipient=None, sender=None):
    """(recipient, sender) from arguments, else the variables Exim (and Postfix's local) set."""
    if not recipient:
        recipient = environ.get("RECIPIENT") or environ.get("ORIGINAL_RECIPIENT") or ""
        if not recipient and environ.get("LOCAL_PART") and environ.get("DOMAIN"):
            suffix = environ.get("LOCAL_PART_SUFFIX", "")
            prefix = environ.get("LOCAL_PART_PREFIX", "")
            recipient = f"{prefix}{environ['LOCAL_PART']}{suffix}@{environ['DOMAIN']}"
    if sender is None:
        sender = environ.get("SENDER", "")
    return recipient, sender


def one_line(text, limit=500):
    return " ".join(str(text).split())[:limit]


class _FirstLine(io.TextIOBase):
    """A stream for log handlers: each record (one write) becomes its first line; a traceback never follows."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        line = one_line(text.lstrip("\n").split("\n", 1)[0])
        if line:
            self.stream.write((line if line.startswith("mailgate:") else f"mailgate: {line}") + "\n")
        return len(text)

    def flush(self):
        self.stream.flush()


def _stream_handlers():
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                yield handler


@contextmanager
def mta_output(stderr):
    """While the gate answers an MTA: log records go to `stderr` one line each, nothing else is printed.

    Log handlers that write to a stream get a one-line view of it; anything
    else written to sys.stdout or sys.stderr (a library's warning or
    traceback) is dropped, since the MTA would put it in its log or a bounce.
    """
    handlers = list(_stream_handlers())
    saved = [(handler, handler.stream) for handler in handlers]
    real_out, real_err = sys.stdout, sys.stderr
    try:
        for handler in handlers:
            handler.setStream(_FirstLine(stderr))
        if not logging.getLogger().handlers:  # no configuration at all: logging would print to sys.stderr
            logging.getLogger().addHandler(logging.StreamHandler(_FirstLine(stderr)))
            saved.append((logging.getLogger().handlers[-1], None))
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
        yield
    finally:
        sys.stdout, sys.stderr = real_out, real_err
        for handler, stream in saved:
            if stream is None:
                logging.getLogger().removeHandler(handler)
            else:
                handler.setStream(stream)


def main(stdin, stdout, stderr, environ, recipient=None, sender=None):
    """Read one message from `stdin` and process it; returns the exit code (shared by the command and the script)."""
    with mta_output(stderr):
        try:
            recipient, sender = envelope_from_environment(environ, recipient, sender)
            raw = read_limited(stdin, conf.MAILGATE_MAX_BYTES)
            size = len(raw) + (drain(stdin) if len(raw) > conf.MAILGATE_MAX_BYTES else 0)
            result = run(raw, recipient, sender, size)
        except Exception as exc:  # reading stdin or the settings failed: nothing stored, let the MTA retry
            result = Result(EX_TEMPFAIL, f"temporary failure: {type(exc).__name__}: {exc}")
    gate_health.record_answer(result)  # so dbmail_status sees a gate that keeps answering 75
    # The MTA puts what we print into its bounce (65, 67, 77) or its log (75).
    (stdout if result.code == EX_OK else stderr).write(f"mailgate: {one_line(result.message, 2000)}\n")
    return result.code
