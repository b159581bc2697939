"""Statuses from email service providers: django-anymail's `tracking` signal feeds the tracking queue.

Optional: connected in DbmailConfig.ready() only when django-anymail is
installed. Our outbound messages carry {"mailsite_email": <tracking id>} as
anymail metadata (dbmail.send.message), which the providers echo back in their
events; that is how an event finds its email. A queue outage raises, so
anymail's webhook view fails and the provider retries later.
"""

from django.utils import timezone

from dbmail.track import queue
from dbmail.track.events import BounceType, EventType, TrackingEvent
from dbmail.track.header import METADATA_KEY

# Anymail's normalised event types that say something about delivery; the others
# (queued, sent, clicked, unsubscribed, ...) are not statuses of ours.
EVENT_TYPES = {
    "delivered": EventType.DELIVERED,
    "deferred": EventType.DEFERRED,
    "bounced": EventType.BOUNCED,
    "rejected": EventType.REJECTED,
    "failed": EventType.REJECTED,
    "complained": EventType.COMPLAINED,
    "opened": EventType.OPENED,
}


def to_event(event, esp_name):
    """Our TrackingEvent for an AnymailTrackingEvent, or None when it is not about delivery."""
    kind = EVENT_TYPES.get(event.event_type)
    if kind is None:
        return None
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    diagnostic = " ".join(str(part) for part in (event.mta_response, event.description) if part)
    return TrackingEvent(
        event_id=str(event.event_id or ""),
        # The provider's own message id is not our Message-ID: it only helps if nothing else matches.
        message_id=str(event.message_id or "") if not metadata.get(METADATA_KEY) else "",
        tracking_id=str(metadata.get(METADATA_KEY) or ""),
        event=kind,
        # Anymail's "bounced" is permanent; temporary failures arrive as "deferred".
        bounce_type=BounceType.HARD if kind == EventType.BOUNCED else None,
        recipient=event.recipient or "",
        timestamp=event.timestamp or timezone.now(),
        diagnostic=diagnostic,
        source=f"anymail:{esp_name}"[:64],
    )


def on_tracking(sender, event, esp_name, **kwargs):
    tracked = to_event(event, esp_name)
    if tracked is not None:
        queue.publish(tracked)


def connect():
    """Connect the receiver if django-anymail is installed; True when connected."""
    try:
        from anymail.signals import tracking as anymail_tracking
    except ImportError:
        return False
    anymail_tracking.connect(on_tracking, dispatch_uid="dbmail.track.anymail")
    return True
