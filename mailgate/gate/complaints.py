"""Complaint reports (ARF, RFC 5965) -> "complained" TrackingEvents for the outbound emails they are about.

Mailbox providers' feedback loops (Microsoft JMRP, Yahoo CFL, many ISPs)
send a `multipart/report; report-type=feedback-report`: a human-readable
part, a `message/feedback-report` part (Feedback-Type, User-Agent, ...) and
the reported message, whole (`message/rfc822`) or its header section
(`text/rfc822-headers`). They arrive at the email's VERP address, from the
null sender, or at an address of MAILGATE_COMPLAINT_ADDRESSES; the gate
recognises them there before anything else, so a report is never read as a
bounce.

The email is found only by what we made and nobody can guess: the signed
tracking header in the reported copy (dbmail.track.header), a signed VERP
address (the copy's Return-Path, the report's Original-Mail-From, the
envelope recipient) and our random Message-ID in the copy. Every one the
report carries must name the same email; a signature that fails, or two
that disagree, leave the report unmatched. The address suppressed is that
email's own: the report's claims (Original-Rcpt-To, Removal-Recipient, the
copy's To) are never read, so a report can only ever concern mail that was
sent to whoever sends it.

Feedback-Type abuse or fraud (or none given, read as abuse) hands one
"complained" event to the tracking queue, the same path as bounces
(mailgate.gate.bounces.publish): dbmail.track.apply then moves the email to
complained, logs it, suppresses the address and lets the reputation guard
count it. not-spam, virus, other, auth-failure and anything else are
recorded and change nothing. Every report is a FeedbackReport row, matched
or not.
"""

from dataclasses import dataclass
from email.utils import collapse_rfc2231_value, parseaddr

from dbmail.content import verp
from dbmail.models import TextOfEmail
from dbmail.track.events import EventType, TrackingEvent
from dbmail.track.header import TRACKING_HEADER, email_pk_from_tracking_id
from mailgate.conf import settings as conf
from mailgate.gate import bounces, parsing
from mailgate.gate.parsing import clean_text
from mailgate.models import FeedbackReport, InboundMessage

FEEDBACK_REPORT = "message/feedback-report"
ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
APPLIED = ("abuse", "fraud")  # what a complaint is; the other types are about something else
MAX_IDENTIFIERS = 10  # of each kind read from one report: a real one has one of each
MAX_HEADERS_BYTES = 256 * 1024  # of a text/rfc822-headers part parsed for its fields


def is_complaint_address(recipient):
    """Whether `recipient` is one of MAILGATE_COMPLAINT_ADDRESSES (or one with a +extension)."""
    if not conf.MAILGATE_COMPLAINT_ADDRESSES:
        return False
    addresses = {a.strip().lower() for a in conf.MAILGATE_COMPLAINT_ADDRESSES}  # a settings file may not clean them
    address = (recipient or "").strip().lower()
    local, at, domain = address.rpartition("@")
    return address in addresses or (bool(at) and f"{local.partition('+')[0]}@{domain}" in addresses)


def is_report(parsed):
    """Whether the message is an ARF report: multipart/report for feedback, or one holding a feedback-report part."""
    if not parsed.ok:
        return False
    message = parsed.message
    if message.get_content_type() == "multipart/report":
        kind = message.get_param("report-type") or ""
        if clean_text(collapse_rfc2231_value(kind)).strip().lower() == "feedback-report":
            return True
    return parsed.complete and any(part.get_content_type() == FEEDBACK_REPORT for part in _parts(message))


def _parts(message):
    """The report's own parts: its direct children only, so a report attached deeper down (a bounce of a
    forward that carried one) does not make the message a report."""
    payload = message.get_payload() if message.is_multipart() else None
    return payload if isinstance(payload, list) else []


class _Fields:
    """The header fields of a part: an attached message's (compat32), or parsed from a part's text."""

    def __init__(self, part):
        self._message, self._parsed = None, None
        payload = part.get_payload() if part is not None else None
        if isinstance(payload, list):
            self._message = payload[0] if payload else None
        elif part is not None:
            try:
                data = part.get_payload(decode=True) or b""
            except Exception:  # a broken transfer encoding: no fields to read
                data = b""
            self._parsed = parsing.parse(data[:MAX_HEADERS_BYTES]) if data else None

    def all(self, name):
        if self._message is not None:
            return [clean_text(v) for v in (self._message.get_all(name) or [])[:MAX_IDENTIFIERS]]
        if self._parsed is not None and self._parsed.ok:
            return self._parsed.header(name)[:MAX_IDENTIFIERS]
        return []

    def first(self, name):
        values = self.all(name)
        return " ".join(values[0].split()) if values else ""


@dataclass
class Report:
    feedback_type: str
    user_agent: str
    fields: _Fields  # of the message/feedback-report part
    original: _Fields  # of the reported message


def read(parsed):
    """The report's feedback fields and the reported message's header fields (empty when not parsed whole)."""
    feedback = original = None
    if parsed.ok and parsed.complete:
        for part in _parts(parsed.message):
            kind = part.get_content_type()
            if kind == FEEDBACK_REPORT and feedback is None:
                feedback = part
            elif kind in ORIGINAL_TYPES and original is None:
                original = part
    fields = _Fields(feedback)
    feedback_type = fields.first("Feedback-Type").lower()[:32]
    return Report(feedback_type or "abuse", fields.first("User-Agent")[:200], fields, _Fields(original))


@dataclass
class Match:
    email: TextOfEmail | None
    identified_by: str = ""
    why: str = ""


def _address(value):
    """The address in a Return-Path or Original-Mail-From value, its case kept (a VERP address's is ours)."""
    try:
        address = parseaddr(value[:2000])[1]
    except Exception:  # comments nested past the recursion limit
        address = ""
    return (address or value).strip().strip("<>").strip()


def find_email(report, envelope_recipient):
    """The email the report is about, found by what we made; a Match saying why when there is none."""
    found = {}  # TextOfEmail pk -> (email, how it was found)
    tracking = [v.strip() for v in report.original.all(TRACKING_HEADER) if v.strip()]
    for value in tracking:
        pk = email_pk_from_tracking_id(value)
        if pk is None:
            return Match(None, why=f"the reported copy's {TRACKING_HEADER} header is forged or damaged")
        email = TextOfEmail.objects.filter(pk=pk).first()
        if email is None:
            return Match(None, why=f"{TRACKING_HEADER} names email #{pk}, which does not exist (any more)")
        found.setdefault(email.pk, (email, FeedbackReport.Identified.TRACKING_HEADER))

    candidates = [_address(v) for v in report.original.all("Return-Path")]
    candidates += [_address(v) for v in report.fields.all("Original-Mail-From")] + [envelope_recipient]
    for address in dict.fromkeys(a for a in candidates if verp.is_verp_address(a)):
        if verp.decode(address) is None:
            return Match(None, why=f"the VERP address {address[:254]} is forged or damaged")
        email = verp.find_email(address)
        if email is None:
            return Match(None, why=f"the VERP address {address[:254]} names no email of ours (any more)")
        found.setdefault(email.pk, (email, FeedbackReport.Identified.VERP))

    message_ids = [v.strip() for v in report.original.all("Message-ID") if v.strip()]
    for email in TextOfEmail.objects.filter(message_id__in=[m[:255] for m in message_ids]):
        found.setdefault(email.pk, (email, FeedbackReport.Identified.MESSAGE_ID))

    if not found:
        return Match(
            None, why="names none of our emails (no signed tracking header, VERP address or Message-ID of ours)"
        )
    if len(found) > 1:
        return Match(None, why=f"names {len(found)} different emails of ours: which one is meant is unknown")
    ((email, how),) = found.values()
    return Match(email, how)


def handle(inbound, parsed):
    """Store the report's finding and hand a "complained" event on when it applies; returns the FeedbackReport."""
    report = read(parsed)
    match = find_email(report, inbound.envelope_recipient)
    whole = parsed.ok and parsed.complete
    applies = match.email is not None and report.feedback_type in APPLIED and whole
    note = match.why
    if match.email is not None and not whole:  # its Feedback-Type was never read: it may not be a complaint
        note = f"the report was not parsed whole ({parsed.incomplete or parsed.error}): recorded, not applied"
    elif match.email is not None and not applies:
        note = f"Feedback-Type {report.feedback_type}: recorded, not applied (only abuse and fraud are complaints)"
    row = FeedbackReport.objects.create(
        inbound=inbound,
        email=match.email,
        feedback_type=report.feedback_type,
        user_agent=report.user_agent,
        identified_by=match.identified_by,
        note=note[:2000],
    )
    if applies:
        bounces.publish(event_for(row, match.email))
        FeedbackReport.objects.filter(pk=row.pk).update(applied=True)
        row.applied = True
    return row


def event_for(row, email):
    """The "complained" TrackingEvent for a report matched to one of our emails: for that email's own address."""
    who = f" by {row.user_agent}" if row.user_agent else ""
    return TrackingEvent(
        event_id=f"mailgate-complaint-{row.pk}",
        message_id=email.message_id,
        event=EventType.COMPLAINED,
        recipient=email.to_address,
        timestamp=row.created_at,
        diagnostic=f"complaint report ({row.feedback_type}){who}, found by {row.get_identified_by_display()}",
        source="mailgate",
    )


def mark(inbound, row):
    if row.applied:
        outcome = f"applied to email #{row.email_id}"
    elif row.email_id:
        outcome = f"about email #{row.email_id}, not applied"
    else:
        outcome = f"unmatched: {row.note}"
    note = f"complaint report ({row.feedback_type}): {outcome}"[:5000]
    InboundMessage.objects.filter(pk=inbound.pk).update(status=InboundMessage.Status.COMPLAINT, note=note)
    inbound.status, inbound.note = InboundMessage.Status.COMPLAINT, note
