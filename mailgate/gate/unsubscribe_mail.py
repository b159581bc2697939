"""Unsubscribing by mail: the mailto half of List-Unsubscribe (RFC 2369).

Mail from the outbox carries `mailto:unsubscribe+<token>@<domain>`; the token
(dbmail.content.tokens, the same one as in the link) names the address it was
issued for, and exactly that address is unsubscribed, whoever sends the mail,
as the link does for whoever clicks it. The envelope sender, which anyone can
forge, proves nothing and is never what gets unsubscribed.

Mail to the address without a valid token (the bare base address, which mail
sent before tokens named, or a tampered token) changes nothing. Its sender
gets a notice with the link for their own address, which only the owner of
that mailbox can use; notices are rate-limited and never go to automatic mail,
the null sender or our own addresses (mailgate.gate.policy).
"""

from dbmail.conf import settings as conf
from dbmail.content import tokens
from dbmail.models import Suppression
from mailgate.gate import policy


def is_unsubscribe_address(recipient):
    return tokens.mailto_token(recipient) is not None


def handle(inbound, parsed):
    """Suppress the address the token names; returns a note saying what happened."""
    token = tokens.mailto_token(inbound.envelope_recipient) or ""
    address = tokens.address_for(token) if tokens.is_token(token) else None
    if address:
        _, created = Suppression.objects.add(address, Suppression.Reason.UNSUBSCRIBED, "unsubscribe by mail")
        sender = inbound.envelope_sender or "<>"
        return f"unsubscribed {address} (its token; sent by {sender})" + ("" if created else " (already suppressed)")
    what = "a token that is not valid" if token else "no token"
    sent = _confirmation_notice(inbound, parsed)
    return f"unsubscribe request with {what}: nothing changed" + (
        f"; the link for {sent.to_address} was sent to it" if sent else ""
    )


def _confirmation_notice(inbound, parsed):
    address = policy.notice_recipient(inbound, parsed)
    if not address:
        return None
    url = tokens.unsubscribe_url(address)
    text = (
        f"Your mail to {inbound.envelope_recipient} carried no valid unsubscribe code, so nothing was changed: "
        "a sender address alone proves nothing, so we never unsubscribe by it.\n\n"
        f"To stop all mail from {conf.DBMAIL_SITE_NAME} to {address}, open this link and confirm:\n\n"
        f"  {url}\n\n"
        "If you did not ask for this, ignore this message; nothing changes."
    )
    return policy.notify_sender(inbound, parsed, f"Unsubscribing {address}: please confirm", text)
