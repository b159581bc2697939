"""Whether a message to a list is forwarded, held or refused, and the notices senders get.

Order: loops and automatic mail are stopped silently (answering them is how
loops start); then the list's posting policy decides. A loop is any mark we
put on mail coming back: the signed tracking header every outbound email
carries, an X-Loop naming one of our addresses, the List-Id of one of our
lists. Members-only and staff-only lists then count a poster only on an
address the message proves (mailgate.gate.proof: a DKIM signature verified
here, or our own MTA's Authentication-Results); MAILGATE_UNVERIFIED_POSTS
says what becomes of a member's post that proves nothing (held by default).

Notices go to the envelope sender, which anyone can forge, so they are kept
harmless to whoever gets them: they quote nothing the sender wrote except
the subject, cut to SUBJECT_QUOTED characters with control characters
removed; they are rate limited per address (MAILGATE_NOTICE_INTERVAL_SECONDS,
shared by all hosts through the database); and they never go to the null
sender, to our own addresses, to role and list-software addresses, in answer
to automatic mail or to list mail. MAILGATE_REFUSE_AT_SMTP turns them off
(see mailgate.gate.receive).
"""

import re
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from dbmail.content.recipients import address_error
from dbmail.intake.outbox import send_now
from dbmail.track.header import TRACKING_HEADER, email_pk_from_tracking_id
from mailgate.conf import settings as conf
from mailgate.gate import addresses, forward, parsing, proof, routing
from mailgate.models import EmailList, SenderNotice

FORWARD, HOLD, REFUSE, LOOP = "forward", "hold", "refuse", "loop"
_AUTO_PRECEDENCE = {"bulk", "junk", "auto_reply"}
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-auto-response")
# Mail from a list (ours or anyone's): never answered with a notice.
_LIST_HEADERS = ("list-id", "list-unsubscribe", "list-post", "mailing-list", "x-mailing-list")
# Envelope senders of people who never read notices: roles, and list software's bounce addresses.
_NO_NOTICE_LOCAL = re.compile(
    r"(mailer-daemon|postmaster|noreply|no-reply|do-not-reply|donotreply|bounces?|listserv|majordomo)"
    r"|owner-.*|.*-(owner|request|bounces?)|.*[+=].*bounce.*|bounces?[+=-].*",
    re.IGNORECASE,
)
SUBJECT_QUOTED = 80  # characters of the sender's subject a notice quotes
MARKS_CHECKED = 10  # values of each marking header looked at (each may cost a query)
_MESSAGE_ID = re.compile(r"<[^<>\s\"]{1,250}>")


@dataclass
class Decision:
    action: str
    reason: str  # shown to the sender in a refusal notice: nothing the sender wrote
    detail: str = ""  # for the stored note only (it may quote the message)

    @property
    def note(self):
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


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


def our_mark(parsed, route):
    """Why the message is one we sent (a reason), or "" when it carries no mark of ours."""
    for value in parsed.header(TRACKING_HEADER)[:MARKS_CHECKED]:
        if email_pk_from_tracking_id(value.strip()) is not None:
            return f"{TRACKING_HEADER} header: mail this site sent came back"
    list_address = route.list_address.lower()
    for value in parsed.header("x-loop")[:MARKS_CHECKED]:
        address = parsing.parseaddr_lower(value) or value.strip().lower()
        if address == list_address or list_address in value.lower():
            return f"X-Loop: {route.list_address} (this list sent it)"
        if "@" in address and (own_address(address) or _our_list(address, route)):
            return f"X-Loop: {address[:100]} (an address of ours sent it)"
    own_id = forward.list_id_value(list_address).lower()
    for value in parsed.header("list-id")[:MARKS_CHECKED]:
        found = _LIST_ID.search(value)
        if found and (found.group(1).lower() == own_id or _is_our_list_id(found.group(1).lower(), route)):
            return f"List-Id: <{found.group(1)[:100]}> (a list of ours sent it)"
    return ""


_LIST_ID = re.compile(r"<([^<>\s]{1,300})>")


def _our_list(address, route):
    """A list of ours answers at `address`: in a domain of ours (mailgate.gate.addresses), or in the one
    this very message came to, which the MTA has just shown to be a list domain."""
    if addresses.list_for(address) is not None:
        return True
    return addresses.domain_of(address) == addresses.domain_of(route.list_address) and (
        routing.find_list(addresses.normalise(address))[0] is not None
    )


def _is_our_list_id(value, route):
    """Whether `value` (label.domain) is the List-Id one of our lists writes for some address it routes.

    Only in our own domains: someone else's list of the same name writes the
    same label under its own domain.
    """
    label, _, domain = value.partition(".")
    if not (label and domain):
        return False
    # The label is the local part with anything but letters, digits and "-" made "-"; most often that was a dot.
    for local in dict.fromkeys((label, label.replace("-", "."))):
        address = f"{local}@{domain}"
        if _our_list(address, route) and forward.list_id_value(address).lower() == value:
            return True
    return False


def loop_reason(parsed, route, envelope_sender):
    mark = our_mark(parsed, route)
    if mark:
        return mark
    if parsing.is_null_sender(envelope_sender):
        return "null envelope sender (a bounce or notice)"
    return is_automatic(parsed)


def is_list_mail(parsed):
    """Mail sent by a mailing list (RFC 2369/2919 headers, Precedence: list)."""
    if parsed.first("precedence").strip().lower() == "list":
        return "Precedence: list"
    for name in _LIST_HEADERS:
        if parsed.header(name):
            return f"{name} header"
    return ""


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
    policy = route.email_list.posting_policy
    if policy == EmailList.Policy.ANYONE:
        return Decision(FORWARD, "anyone may post")
    if policy == EmailList.Policy.MODERATED:
        return Decision(HOLD, "the list is moderated")
    if policy == EmailList.Policy.MEMBERS:
        return _restricted(parsed, envelope_sender, "a member", "members", route.is_member)
    if policy == EmailList.Policy.STAFF:
        return _restricted(parsed, envelope_sender, "staff", "staff", lambda address: _is_staff([address]))
    return Decision(HOLD, f"unknown posting policy {policy!r}")  # hold rather than guess


def _restricted(parsed, envelope_sender, who, group, allowed):
    """A members-only or staff-only list: the poster must be one, and their address proven (mailgate.gate.proof).

    The From header is what members see; the envelope sender is accepted too
    (lists relayed by another host). Both are only claims: whom they name is
    looked up first (a stranger costs no DNS lookup), then whether the
    message proves it, unless MAILGATE_UNVERIFIED_POSTS=trust.
    """
    claimed = [a for a in dict.fromkeys((parsed.from_address, (envelope_sender or "").strip().lower())) if a]
    candidates = [address for address in claimed if allowed(address)]
    if not candidates:
        return Decision(REFUSE, f"only {group} may post to this list")
    mode = conf.MAILGATE_UNVERIFIED_POSTS
    if mode == "trust":
        return Decision(FORWARD, f"posted by {who} (claimed, not proven: MAILGATE_UNVERIFIED_POSTS=trust)")
    proofs = proof.check(parsed, envelope_sender, set(candidates))
    for address in candidates:
        if address in proofs.proven:
            return Decision(FORWARD, f"posted by {who} ({proofs.proven[address]})")
    reason = f"the sender's address is not proven ({proof.NOT_PROVEN})"
    detail = f"{candidates[0]} would be {who}; {proofs.details()}".rstrip("; ")
    return Decision(REFUSE if mode == "refuse" else HOLD, reason, detail)


# --- Notices to senders ----------------------------------------------------------------------


def own_address(address):
    """True for addresses of this site (mailgate.gate.addresses: only in the domains it routes)."""
    return addresses.own_address(address)


def notice_recipient(inbound, parsed):
    """Where a notice about `inbound` may go, or "" when it must not be sent at all."""
    if conf.MAILGATE_REFUSE_AT_SMTP:
        return ""
    sender = (inbound.envelope_sender or "").strip().lower()
    if parsing.is_null_sender(sender) or address_error(sender):
        return ""
    local = sender.rpartition("@")[0]
    if _NO_NOTICE_LOCAL.fullmatch(local) or own_address(sender):
        return ""
    if parsed is None or not parsed.ok:  # unreadable mail shows nothing that says it is not automatic
        return ""
    if is_automatic(parsed) or is_list_mail(parsed):
        return ""
    return sender


def quoted_subject(subject):
    """The sender's subject as a notice may quote it: one line, no control or format characters, short."""
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in subject[:2000])
    text = " ".join(text.split())
    return text if len(text) <= SUBJECT_QUOTED else text[: SUBJECT_QUOTED - 1].rstrip() + "…"


def _list_name(inbound):
    """How a notice names the list: its name as staff wrote it, never the address the sender chose."""
    return inbound.email_list.name if inbound.email_list_id else "the list"


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
    headers = {
        "Auto-Submitted": "auto-replied",
        "Precedence": "auto_reply",
        "X-Loop": parsing.parseaddr_lower(settings.DEFAULT_FROM_EMAIL),
    }
    message_id = _MESSAGE_ID.fullmatch(inbound.message_id.strip())
    if message_id:  # for threading only; a malformed one is not repeated
        headers.update({"In-Reply-To": message_id.group(), "References": message_id.group()})
    body = (
        f"{text}\n\n"
        f"Your message:\n  Subject: {quoted_subject(inbound.subject) or '(none)'}\n"
        f"  Received: {inbound.received_at:%Y-%m-%d %H:%M %Z}\n\n"
        "This is an automatic notice; replies to it are not read.\n"
    )
    return send_now(address, subject=subject, text=body, headers=headers)


def notice_no_such_list(inbound, parsed):
    return notify_sender(
        inbound,
        parsed,
        "Undeliverable: no such address",
        "The address you wrote to does not exist here, so your message was not delivered.",
    )


def notice_refused(inbound, parsed, reason):
    name = _list_name(inbound)
    return notify_sender(
        inbound,
        parsed,
        f"Not delivered: your message to {name}",
        f"Your message to {name} was not delivered: {reason}.",
    )


def notice_rejected(inbound, parsed, comment=""):
    """A moderator's decision; `comment` is the moderator's own text."""
    name = _list_name(inbound)
    text = f"A moderator of {name} declined your message; it was not delivered."
    if comment:
        text += f"\n\n{comment}"
    return notify_sender(inbound, parsed, f"Declined: your message to {name}", text, rate_limited=False)
