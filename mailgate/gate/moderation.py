"""The moderation queue: held messages are approved (forwarded) or rejected (the sender is told)."""

from django.db import transaction
from django.utils import timezone

from dbmail import audit
from mailgate.exceptions import NotHeld
from mailgate.gate import forward, parsing, policy, routing
from mailgate.models import InboundMessage


def _take(inbound, user, status):
    """Move a held message to `status` under a row lock, so two moderators cannot both decide it."""
    locked = InboundMessage.objects.select_for_update().get(pk=inbound.pk)
    if locked.status != InboundMessage.Status.HELD:
        raise NotHeld(f"message #{inbound.pk} is {locked.status}, not held")
    locked.status, locked.decided_by, locked.decided_at = status, user, timezone.now()
    return locked


def approve(inbound, user):
    """Forward a held message to its list's current members; returns how many copies were queued."""
    with transaction.atomic():
        locked = _take(inbound, user, InboundMessage.Status.FORWARDED)
        parsed = parsing.parse(locked.raw)
        route = routing.route(locked.envelope_recipient)
        if route is None or not parsed.ok:
            raise NotHeld(f"message #{inbound.pk} no longer matches a list or cannot be parsed")
        locked.forwarded_count = forward.forward(locked, parsed, route)
        # Why it was held stays with the approval: "approved" over "not proven" is a moderator's judgement.
        locked.note = f"approved by {user} (held: {locked.note})"[:5000] if locked.note else f"approved by {user}"
        locked.save(update_fields=["status", "decided_by", "decided_at", "forwarded_count", "note"])
        audit.record(user, "approve", locked, detail=f"forwarded to {locked.forwarded_count} member(s)")
    return locked.forwarded_count


def reject(inbound, user, comment=""):
    """Reject a held message and tell the sender (not rate limited; never to null or own addresses)."""
    with transaction.atomic():
        locked = _take(inbound, user, InboundMessage.Status.REJECTED)
        notice = policy.notice_rejected(locked, parsing.parse(locked.raw), comment)
        told = "; sender notified" if notice else "; no notice (automatic or own sender)"
        locked.note = f"rejected by {user}{told}"
        locked.save(update_fields=["status", "decided_by", "decided_at", "note"])
        audit.record(user, "reject", locked, detail=told.lstrip("; ") + (f"; comment: {comment}" if comment else ""))
    return notice
