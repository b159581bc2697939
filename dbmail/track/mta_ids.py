"""The MTA's queue id of an email we sent: how a log line or a callback naming only that id finds the email.

The send path keeps the server's final reply to each message in the
attempt's DeliveryEvent (dbmail.send.smtp, dbmail.send.outcomes); Postfix and
Exim answer "250 2.0.0 Ok: queued as 4Bx7...", which names the queue id. The
log follower (dbmail.track.logfollow) and the applier (dbmail.track.apply,
for callbacks that carry only a queue id) both look it up here.
"""

import re
from datetime import timedelta

from django.utils import timezone

from dbmail import states
from dbmail.models import DeliveryEvent

# Queue ids are reused; MTAs give up on a message after about five days.
LOOK_BACK = timedelta(days=7)


def message_id_for_queue_id(queue_id, when):
    """Our email's Message-ID for an MTA queue id, from the server's reply to our send, or None."""
    since = (when or timezone.now()) - LOOK_BACK
    pattern = re.compile(rf"(?<![0-9A-Za-z-]){re.escape(queue_id)}(?![0-9A-Za-z-])")
    attempts = (
        DeliveryEvent.objects.filter(kind=DeliveryEvent.Kind.ATTEMPT, outcome=states.EmailStatus.SENT, at__gte=since)
        .filter(text__contains=queue_id)
        .order_by("-at")
        .values_list("text", "email__message_id")
    )
    return next((message_id for text, message_id in attempts if pattern.search(text)), None)
