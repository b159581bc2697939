"""Whether a message to a list is forwarded, held or refused, and the notices senders get.

Order: loops and automatic mail are stopped silently (answering them is how
loops start); then the list's posting policy decides. Notices are rate
limited per address (MAILGATE_NOTICE_INTERVAL_SECONDS, shared by all hosts
through the database) and never go to the null sender, to our own addresses
or in answer to automatic mail.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from dbmail.content.recipients import address_error
from dbmail.intake.outbox import send_now
from mailgate.conf import settings as conf
from mailgate.gate import addresses, parsing
from mailgate.models import EmailList, SenderNotice

FORWARD, HOLD, REFUSE, LOOP = "forward", "hold", "refuse", "loop"
_AUTO_PRECEDENCE = {"bulk", "junk", "auto_reply"}
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response")


@dataclass
class Decision:
    action: str
    reason: str


def is_automatic(parsed):
    """Auto-submitted or auto-replied mail (RFC 3834 and the common older markers)."""
    auto = parsed.first("auto-submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    precedence = parsed.first("precedence").strip().lower()
    if precedence in _AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    for name in _AUTO_HEADERS:
        if parsed.header(name):
            return f"{name} header"
    return ""


def loop_reason(parsed, route, envelope_sender):
    list_address = route.list_address.lower()
    if any(list_address in value.lower() for value in parsed.header("x-loop")):
        return f"X-Loop: {route.list_address} (this list sent it)"
    if parsing.is_null_sender(envelope_sender):
        return "null envelope sender (a bounce or notice)"
    return is_automatic(parsed)


def _is_staff(addresses):
    match_any = Q()
    for address in addresses:
        match_any |= Q(email__iexact=address)
    return get_user_model().objects.filter(match_any, is_active=True, is_staff=True).exists()


def decide(parsed, route, envelope_sender):
    """What to do with a parsed message to `route`'s list."""
    reason = loop_reason(parsed, route, envelope_sender)
    if reason:
        return Decision(LOOP, reason)
    # The From header is what members see; the envelope sender is accepted too (lists relayed by another host).
    posters = [a for a in {parsed.from_address, (envelope_sender or "").lower()} if a]
    policy = route.email_list.posting_policy
    if policy == EmailList.Policy.ANYONE:
        return Decision(FORWARD, "anyone may post")
    if policy == EmailList.Policy.MODERATED:
        return Decision(HOLD, "the list is moderated")
    if policy == EmailList.Policy.MEMBERS:
        if any(route.is_member(a) for a in posters):
            return Decision(FORWARD, "posted by a member")
        return Decision(REFUSE, "only members may post to this list")
    if policy == EmailList.Policy.STAFF:
        if posters and _is_staff(posters):
            return Decision(FORWARD, "posted by staff")
        return Decision(REFUSE, "only staff may post to this list")
    return Decision(HOLD, f"unknown posting policy {policy!r}")  # hold rather than guess


# --- Notices to senders ----------------------------------------------------------------------


def own_address(address):
    """True for addresses of this site (mailgate.gate.addresses: only in the domains it routes)."""
    return addresses.own_address(address)


def notice_recipient(inbound, parsed):
    """Where a notice about `inbound` may go, or "" when it must not be sent at all."""
    sender = (inbound.envelope_sender or "").strip().lower()
    if parsing.is_null_sender(sender) or address_error(sender):
        return ""
    local = sender.rpartition("@")[0]
    if local in ("mailer-daemon", "postmaster", "noreply", "no-reply") or own_address(sender):
        return ""
    if parsed is not None and parsed.ok and is_automatic(parsed):
        return ""
    return sender


def _may_send(address, rate_limited):
    """Record a notice to `address`; False when the rate limit says not now."""
    now = timezone.now()
    interval = timedelta(seconds=conf.MAILGATE_NOTICE_INTERVAL_SECONDS)
    with transaction.atomic():
        notice, created = SenderNotice.objects.select_for_update().get_or_create(
            address=address, defaults={"last_sent_at": now, "sent_count": 1}
        )
        if created:
            return True
        if rate_limited and notice.last_sent_at > now - interval:
            notice.suppressed_count += 1
            notice.save(update_fields=["suppressed_count"])
            return False
        notice.last_sent_at = now
        notice.sent_count += 1
        notice.save(update_fields=["last_sent_at", "sent_count"])
        return True


def notify_sender(inbound, parsed, subject, text, rate_limited=True):
    """Send a short notice about `inbound` to its envelope sender; returns the TextOfEmail or None."""
    address = notice_recipient(inbound, parsed)
    if not address or not _may_send(address, rate_limited):
        return None
    headers = {"Auto-Submitted": "auto-replied", "X-Loop": parsing.parseaddr_lower(settings.DEFAULT_FROM_EMAIL)}
    if inbound.message_id:
        headers.update({"In-Reply-To": inbound.message_id, "References": inbound.message_id})
    body = (
        f"{text}\n\n"
        f"Your message:\n  To: {inbound.envelope_recipient}\n  Subject: {inbound.subject or '(none)'}\n"
        f"  Received: {inbound.received_at:%Y-%m-%d %H:%M %Z}\n\n"
        "This is an automatic notice; replies to it are not read.\n"
    )
    return send_now(address, subject=subject, text=body, headers=headers)


def notice_no_such_list(inbound, parsed):
    return notify_sender(
        inbound,
        parsed,
        f"Undeliverable: no such address {inbound.envelope_recipient}",
        f"There is no list or mailbox at {inbound.envelope_recipient}, so your message was not delivered.",
    )


def notice_refused(inbound, parsed, reason):
    return notify_sender(
        inbound,
        parsed,
        f"Not delivered: your message to {inbound.envelope_recipient}",
        f"Your message to {inbound.envelope_recipient} was not delivered: {reason}.",
    )


def notice_rejected(inbound, parsed, comment=""):
    text = f"A moderator of {inbound.envelope_recipient} declined your message; it was not delivered."
    if comment:
        text += f"\n\n{comment}"
    return notify_sender(
        inbound, parsed, f"Declined: your message to {inbound.envelope_recipient}", text, rate_limited=False
    )
