"""Statuses from email service providers: django-anymail's `tracking` signal feeds the tracking queue.

Optional: connected in DbmailConfig.ready() only when django-anymail is
installed. Our outbound messages carry {"mailsite_email": <tracking id>} as
anymail metadata (dbmail.send.message), which the providers echo back in their
events; that is how an event finds its email. A queue outage raises, so
anymail's webhook view fails and the provider retries later.
"""

from django.utils import timezone

from dbmail.track import apply as tracking

# Anymail's normalised event types that say something about delivery; the others
# (queued, sent, clicked, unsubscribed, ...) are not statuses of ours.
EVENT_TYPES = {
    "delivered": "delivered",
    "deferred": "deferred",
    "bounced": "bounced",
    "rejected": "rejected",
    "failed": "rejected",
    "complained": "complained",
    "opened": "opened",
}


def to_event(event, esp_name):
    """Our event dict for an AnymailTrackingEvent, or None when it is not about delivery."""
    kind = EVENT_TYPES.get(event.event_type)
    if kind is None:
        return None
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    diagnostic = " ".join(str(part) for part in (event.mta_response, event.description) if part)
    return {
        "event_id": str(event.event_id or ""),
        # The provider's own message id is not our Message-ID: it only helps if nothing else matches.
        "message_id": str(event.message_id or "") if not metadata.get("mailsite_email") else "",
        "tracking_id": str(metadata.get("mailsite_email") or ""),
        "event": kind,
        # Anymail's "bounced" is permanent; temporary failures arrive as "deferred".
        "bounce_type": "hard" if kind == "bounced" else None,
        "recipient": event.recipient or "",
        "timestamp": (event.timestamp or timezone.now()).isoformat(),
        "diagnostic": diagnostic,
        "source": f"anymail:{esp_name}"[:64],
    }


def on_tracking(sender, event, esp_name, **kwargs):
    data = to_event(event, esp_name)
    if data is not None:
        tracking.publish(data)


def connect():
    """Connect the receiver if django-anymail is installed; True when connected."""
    try:
        from anymail.signals import tracking as anymail_tracking
    except ImportError:
        return False
    anymail_tracking.connect(on_tracking, dispatch_uid="dbmail.track.anymail")
    return True
