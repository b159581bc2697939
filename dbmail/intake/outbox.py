"""The ad-hoc path (seed 000): the one door for mail that is sent now rather than by dbmail_cron.

    from dbmail.intake.outbox import send_now
    send_now(to="ann@example.org", subject="Your password", text="...")

The email is a TextOfEmail row like any other, with the same log and
statuses. send_now sends once the caller's transaction commits (so a rolled
back view sends nothing); if the SMTP server is down it stays in the queue
and the next dbmail_cron run retries it.

Callers that build their emails themselves (enqueue, then adjust them: list
forwards, mailbox messages, the panel's test mail) hand them to
send_after_commit or send_at_once; no one else calls the send loop's
single-email path.
"""

from email.utils import formataddr, parseaddr

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from dbmail import states
from dbmail.content import recipients, rendering, verp
from dbmail.exceptions import UnknownSender
from dbmail.models import DeliveryEvent, SenderAccount, Suppression, TextOfEmail
from dbmail.send.loop import send_one_now


def site_addresses():
    """The site's own addresses (DEFAULT_FROM_EMAIL, SERVER_EMAIL), lower-case: they send without a sender account."""
    return {parseaddr(a or "")[1].strip().lower() for a in (settings.DEFAULT_FROM_EMAIL, settings.SERVER_EMAIL)}


def resolve_sender(from_email=None):
    """(account or None, From header, address) for `from_email`, refusing unconfigured senders."""
    from_email = from_email or settings.DEFAULT_FROM_EMAIL
    name, address = parseaddr(from_email)
    address = address.lower()
    account = SenderAccount.objects.filter(address=address, active=True).first()
    if account:
        return account, (formataddr((name, address)) if name else account.from_header), address
    if address in site_addresses():
        return None, from_email, address
    raise UnknownSender(f"{address!r} is not a configured sender account")


def enqueue(
    to,
    subject="",
    text="",
    html="",
    *,
    from_email=None,
    reply_to="",
    headers=None,
    raw_message=None,
    envelope_sender=None,
    user=None,
    send_at=None,
    message_id=None,
    from_header=None,
):
    """Create one queued email (a dropped one, with the reason, if `to` is not an address or gets no mail).

    An address suppressed for a hard bounce, a complaint or by hand gets no
    mail at all: the email is made dropped, its reason naming the suppression
    ("suppressed: hard bounce on 2026-11-30"). An unsubscribe does not stop it.

    A `raw_message` carries its own headers: pass the `message_id` written in
    it, and the `from_header` it shows if that differs from `from_email` (a
    list forward's From is the list; the account sending it is `from_email`).
    """
    account, resolved_from_header, from_address = resolve_sender(from_email)
    message_id = message_id or rendering.new_message_id(from_address)
    name, address = parseaddr(to)
    address = recipients.normalise_address(address or to)
    now = timezone.now()
    if html and not text:
        text = rendering.html_to_text(html)
    email = TextOfEmail(
        account=account,
        user=user,
        to_address=address[:254],
        to_name=name[:200],
        from_header=from_header or resolved_from_header,
        envelope_sender=envelope_sender or verp.envelope_sender(message_id, from_address),
        reply_to=reply_to,
        subject=" ".join(subject.split())[:998],
        text=text,
        html=html,
        headers=headers or {},
        raw_message=raw_message,
        message_id=message_id,
        status=states.ENQUEUE.target,
        status_changed_at=now,
        next_attempt_at=send_at or now,
    )
    error = recipients.address_error(address) or _suppressed(address)
    if error:
        email.status, email.last_error = states.REFUSE.target, error
    email.save()
    if error:
        DeliveryEvent.objects.create(email=email, kind=DeliveryEvent.Kind.ADMIN, outcome=email.status, text=error)
    return email


def _suppressed(address):
    # A hard bounce, a complaint or a block stops even this mail; an unsubscribe stops bulk mail only,
    # which never reaches here for an unsubscribed address (its recipients leave them out).
    row = Suppression.stopping_all_mail([address]).get(address.lower())
    return row.refusal() if row else ""


def send_now(to, subject="", text="", html="", **kwargs):
    """Enqueue one email and send it as soon as the current transaction commits."""
    email = enqueue(to, subject, text, html, **kwargs)
    send_after_commit([email])
    return email


def send_after_commit(emails, *, robust=False):
    """Send each still queued email of `emails` once the current transaction commits (at once outside one).

    A rolled back transaction sends nothing. With `robust`, a failure while
    sending is logged instead of raised, for callers whose committed work must
    stand whatever happens after it (the gate answering the MTA).
    """
    for email in emails:
        if email.status == states.EmailStatus.QUEUED:
            # A lambda, not functools.partial: robust on_commit logs the callback's __qualname__.
            transaction.on_commit(lambda email=email: send_one_now(email), robust=robust)


def send_at_once(emails):
    """Send each still queued email of `emails` now, in this process; the emails are refreshed in place.

    For callers whose emails are already committed and who want the outcome
    before they go on (a mailbox message mirrors its copies' statuses).
    """
    for email in emails:
        if email.status == states.EmailStatus.QUEUED:
            send_one_now(email)
    return emails
