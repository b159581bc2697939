"""Unsubscribing by mail: the mailto half of List-Unsubscribe (RFC 2369).

Request mail carries `mailto:<DBMAIL_UNSUBSCRIBE_MAILTO>?subject=unsubscribe <address>`.
A mail can only show where it comes from, so the address unsubscribed is the
envelope sender, and a subject naming some other address changes nothing:
nobody can unsubscribe someone else by mail. Automatic mail is ignored.
"""

import re

from dbmail.conf import settings as conf
from dbmail.content.recipients import normalise_address
from dbmail.models import Suppression
from mailgate.gate import policy

_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")


def is_unsubscribe_address(recipient):
    return bool(conf.DBMAIL_UNSUBSCRIBE_MAILTO) and (
        recipient.strip().lower() == conf.DBMAIL_UNSUBSCRIBE_MAILTO.lower()
    )


def handle(inbound, parsed):
    """Suppress the sender's address if the request is genuine; returns a note saying what happened."""
    sender = normalise_address(inbound.envelope_sender).lower()
    if not sender or (parsed.ok and policy.is_automatic(parsed)):
        return "unsubscribe request ignored: automatic mail or no sender"
    named = _ADDRESS.search(parsed.subject or "")
    if named and named.group(0).lower() != sender:
        return f"unsubscribe request ignored: it names {named.group(0)} but comes from {sender}"
    _, created = Suppression.objects.get_or_create(
        address=sender, defaults={"reason": Suppression.Reason.UNSUBSCRIBED, "note": "unsubscribe by mail"}
    )
    return f"unsubscribed {sender}" + ("" if created else " (already suppressed)")
