"""Bounces -> "bounced" TrackingEvents for the outbound emails they are about.

A bounce is recognised by its envelope recipient (a signed VERP address, see
dbmail.content.verp) or, for the null sender, by a delivery report naming one of our
Message-IDs. Failed recipients come from RFC 3464 multipart/report parts
(Status 5.x.x = hard, 4.x.x = soft, Action: delayed = only a warning) and,
for the many non-standard forms, from flufl.bounce's detectors. Every finding
is stored as a Bounce row, matched or not, so nothing is silently dropped.
"""

import logging
import re
from dataclasses import dataclass

from dbmail.content import verp
from dbmail.models import TextOfEmail
from dbmail.track import queue
from dbmail.track.events import EventType, TrackingEvent
from mailgate.gate import parsing
from mailgate.gate.parsing import clean_text
from mailgate.models import Bounce, InboundMessage

log = logging.getLogger(__name__)

_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
_BOUNCE_SUBJECTS = ("undeliver", "delivery status", "returned mail", "delivery failure", "failure notice")
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\s]{1,250}>)", re.IGNORECASE | re.MULTILINE)
HEURISTICS_MAX_BYTES = 1024 * 1024  # flufl.bounce's detectors scan every line of every part
MAX_DSN_RECIPIENTS = 1000  # recipient blocks read from one delivery-status part
MAX_QUOTED_MESSAGE_IDS = 100


@dataclass
class Failure:
    recipient: str
    bounce_type: str
    status_code: str = ""
    diagnostic: str = ""


def _addr(value):
    """The address in a DSN field such as "rfc822; bob@example.net"."""
    value = clean_text(value).strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    return value.strip().strip("<>").strip().lower()


def dsn_failures(message):
    """Per-recipient failures from RFC 3464 delivery-status parts (of a complete parse: parts are capped)."""
    failures = []
    for part in parsing.walk(message):
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        blocks = payload if isinstance(payload, list) else []
        for block in (blocks[1:] if len(blocks) > 1 else blocks)[:MAX_DSN_RECIPIENTS]:
            recipient = _addr(block.get("Final-Recipient") or block.get("Original-Recipient"))
            if not recipient:
                continue
            action = clean_text(block.get("Action")).strip().lower()
            status = clean_text(block.get("Status")).strip()
            diagnostic = " ".join(clean_text(block.get("Diagnostic-Code")).split())
            code = _STATUS.search(status) or _STATUS.search(diagnostic)
            if action in ("delivered", "relayed", "expanded"):
                continue
            if action == "delayed":
                kind = Bounce.Type.DELAYED
            elif code and code.group(1) == "5":
                kind = Bounce.Type.HARD
            elif code and code.group(1) == "4":
                kind = Bounce.Type.SOFT
            else:
                kind = Bounce.Type.HARD if action == "failed" else Bounce.Type.UNKNOWN
            failures.append(Failure(recipient, kind, code.group(0) if code else status[:20], diagnostic[:2000]))
    return failures


def _decode(value):
    return clean_text(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)


def _detectors():
    """flufl.bounce's detectors, most specific first, as its all_failures() runs them."""
    try:
        from flufl.bounce._scan import _DETECTORS  # the list all_failures() walks; pinned in requirements.txt
    except ImportError:  # a flufl.bounce without it: its one entry point, all failures at once
        from flufl.bounce import all_failures

        class _All:
            def process(self, message):
                return all_failures(message)

        return [_All]
    return list(_DETECTORS)


def run_detectors(message):
    """(temporary, permanent) addresses as flufl.bounce finds them, each detector on its own.

    Like flufl.bounce, the first detector that finds anything decides. Unlike
    it, a detector that raises (odd bytes make some of them fail) is logged in
    one line and skipped, so the others still look at the bounce.
    """
    for detector in _detectors():
        try:
            temporary, permanent = detector().process(message)
        except Exception as exc:  # one broken detector must not lose what the others find
            log.warning("mailgate: bounce detector %s failed: %s: %s", detector.__name__, type(exc).__name__, exc)
            continue
        if temporary or permanent:
            return set(temporary), set(permanent)
    return set(), set()


def heuristic_failures(parsed, raw):
    """Failures found by flufl.bounce's detectors (Exim, qmail, Postfix, Yahoo, ... forms).

    They walk every part with regular expressions, so they run only on a
    message parsed whole and no bigger than HEURISTICS_MAX_BYTES; anything
    else is stored as an unrecognised bounce (its bytes are kept).
    """
    if not (parsed.ok and parsed.complete) or len(raw) > HEURISTICS_MAX_BYTES:
        return []
    temporary, permanent = run_detectors(parsed.message)
    failures = [Failure(_decode(a).strip("<>").lower(), Bounce.Type.HARD) for a in sorted(permanent, key=str)]
    failures += [
        Failure(_decode(a).strip("<>").lower(), Bounce.Type.SOFT) for a in sorted(temporary - permanent, key=str)
    ]
    text = diagnostic_text(parsed, raw)
    for failure in failures:
        failure.diagnostic = text
        code = _STATUS.search(text)
        failure.status_code = code.group(0) if code else ""
    return failures


def diagnostic_text(parsed, raw):
    """The human-readable start of a bounce, for the log: its first text part, else its first bytes."""
    text = ""
    if parsed.ok and parsed.complete:
        for part in parsing.walk(parsed.message):
            if part.get_content_type() == "text/plain":
                text = _part_text(part)
                break
    if not text:
        text = bytes(raw)[:4000].decode("utf-8", "replace")
    lines = [line.strip() for line in clean_text(text[:20000]).splitlines() if line.strip()]
    return " ".join(lines)[:1000]


def _part_text(part):
    try:
        data = part.get_payload(decode=True) or b""
    except Exception:  # a broken transfer encoding: nothing readable here
        return ""
    data = data[:20000]
    try:
        return data.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # an unknown or made-up charset
        return data.decode("utf-8", "replace")


def failures(parsed, raw):
    if parsed.ok and parsed.complete:
        found = dsn_failures(parsed.message)
        if found:
            return found
    return heuristic_failures(parsed, raw)


def looks_like_bounce(parsed):
    if not parsed.ok:
        return False
    message = parsed.message
    if message.get_content_type() == "multipart/report":
        return True
    subject = parsed.subject.lower()
    return any(word in subject for word in _BOUNCE_SUBJECTS)


def original_message_ids(raw):
    """Message-IDs quoted in the returned headers of a bounce (for bounces without VERP), the first 100."""
    found = {}
    for match in _MESSAGE_ID.finditer(bytes(raw)):
        found.setdefault(clean_text(match.group(1).decode("utf-8", "replace")), None)
        if len(found) == MAX_QUOTED_MESSAGE_IDS:
            break
    return list(found)


def handle(inbound, parsed, verp_email=None, trust_message_ids=True):
    """Store the bounce's findings and hand an event on for each matched email; returns the Bounce rows.

    `trust_message_ids` is False for a VERP address whose signature failed: a
    forged address must not be able to mark mail bounced by quoting its ID.
    """
    found = failures(parsed, bytes(inbound.raw))
    candidates = []
    if verp_email is not None:
        candidates = [verp_email]
    elif trust_message_ids:
        ids = original_message_ids(inbound.raw)
        candidates = list(TextOfEmail.objects.filter(message_id__in=ids)) if ids else []

    rows = []
    if verp_email is not None and found:
        # The VERP address names the email; the report's own recipient may be a forward of it.
        same = [f for f in found if f.recipient == verp_email.to_address.lower()]
        pick = same[0] if same else sorted(found, key=lambda f: f.bounce_type != Bounce.Type.HARD)[0]
        found = [Failure(verp_email.to_address.lower(), pick.bounce_type, pick.status_code, pick.diagnostic)]
    if not found:
        found = [
            Failure(
                verp_email.to_address.lower() if verp_email else "",
                Bounce.Type.UNKNOWN,
                "",
                diagnostic_text(parsed, bytes(inbound.raw)),
            )
        ]

    for failure in found:
        email = next((e for e in candidates if e.to_address.lower() == failure.recipient), None)
        if email is None and verp_email is None and len(candidates) == 1 and len(found) == 1:
            email = candidates[0]
        bounce = Bounce.objects.create(
            inbound=inbound,
            email=email,
            recipient=failure.recipient[:254],
            bounce_type=failure.bounce_type,
            status_code=failure.status_code[:20],
            diagnostic=failure.diagnostic,
        )
        if email is not None and failure.bounce_type in (Bounce.Type.HARD, Bounce.Type.SOFT):
            publish(event_for(bounce, email))
            Bounce.objects.filter(pk=bounce.pk).update(applied=True)
            bounce.applied = True
        rows.append(bounce)
    return rows


def event_for(bounce, email):
    """The TrackingEvent for a hard or soft bounce matched to one of our emails."""
    return TrackingEvent(
        event_id=f"mailgate-bounce-{bounce.pk}",
        message_id=email.message_id,
        event=EventType.BOUNCED,
        bounce_type=bounce.bounce_type,
        recipient=bounce.recipient or email.to_address,
        timestamp=bounce.created_at,
        diagnostic=bounce.diagnostic or bounce.status_code,
        source="mailgate",
    )


def publish(event):
    """Hand one bounce event to the tracking queue: the same path as MTA callbacks.

    dbmail_track applies it (precedence, the email's log, suppression of hard bounces).
    """
    queue.publish(event)


def mark_bounce(inbound, rows):
    matched = sum(1 for r in rows if r.email_id)
    note = f"bounce: {len(rows)} finding(s), {matched} matched to outbound mail"
    InboundMessage.objects.filter(pk=inbound.pk).update(status=InboundMessage.Status.BOUNCE, note=note)
    inbound.status, inbound.note = InboundMessage.Status.BOUNCE, note


def verp_email(recipient):
    """(is a VERP address, the TextOfEmail it names or None)."""
    if not verp.is_verp_address(recipient):
        return False, None
    return True, verp.find_email(recipient)
