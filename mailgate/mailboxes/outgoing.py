"""Outgoing mailbox messages: a `sending` message goes out through its account's own SMTP server.

Sending is dbmail's: the message becomes one outbox email per recipient
(dbmail.intake.outbox.enqueue) from the account's own dbmail SenderAccount
(its mirror: made for it, written only by it), whose SMTP settings are the
account's profile and login, so dbmail's sender connects to that server and
keeps its log, retries and statuses. Whether the account may send as its
address at all is mailgate.mailboxes.identity's to say; a message it may not
send goes to `error` with the reason. This module only hands the message
over once and mirrors the outcome back:

    every copy sent (or later delivered)        -> sent
    any copy dropped, cancelled or bounced      -> error, with the reasons
    otherwise (queued, sending, deferred)       -> stays sending
"""

import logging
from email.utils import parseaddr

from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import ProtectedError

from dbmail import states
from dbmail.content import headers as header_values
from dbmail.content import recipients as dbmail_recipients
from dbmail.content import rendering
from dbmail.intake import outbox
from dbmail.models import SenderAccount
from mailgate.exceptions import AddressTaken
from mailgate.mailboxes import identity
from mailgate.models import MailAccount, Message, MessagePart

log = logging.getLogger(__name__)
_SENT = set(states.SUCCEEDED)
_FAILED = set(states.FAILED)
_PENDING = set(states.UNFINISHED)


def sync_sender(account):
    """Create or update the account's own dbmail sender account (its "mirror"); never any other one.

    The mirror is made fresh for the account (or is the switched-off mirror a
    deleted account with that address left behind) and is active only while
    the account may send (identity.sending_refusal). Raises AddressTaken, with
    nothing written, when the address is someone else's.
    """
    refusal = identity.address_refusal(account.address, account)
    if refusal:
        raise AddressTaken(refusal)
    profile = account.profile
    own_login = identity.proves_itself(profile)
    values = dict(
        address=account.address,
        display_name=account.display_name,
        active=account.enabled and not identity.sending_refusal(account),
        smtp_host=profile.smtp_host,
        smtp_port=profile.smtp_port if profile.smtp_host else None,
        smtp_username=account.login if own_login else "",
        smtp_password=account.secret if own_login else "",
        smtp_use_tls=profile.smtp_starttls,
        smtp_use_ssl=profile.smtp_ssl,
        mailbox=True,
    )
    with transaction.atomic():
        sender = account.sender_id and SenderAccount.objects.select_for_update().filter(pk=account.sender_id).first()
        sender = sender or (
            SenderAccount.objects.select_for_update(of=("self",))
            .filter(address__iexact=account.address, mailbox=True, mail_account__isnull=True)
            .first()
        )
        if sender is None:
            sender = SenderAccount.objects.create(**values)
        else:
            for name, value in values.items():
                setattr(sender, name, value)
            sender.save()
        if account.sender_id != sender.pk:
            MailAccount.objects.filter(pk=account.pk).update(sender=sender)
    account.sender = sender
    return sender


def sync_profile(profile):
    """After a profile's SMTP settings change: every account's sender account follows (a taken one is noted)."""
    for account in profile.accounts.select_related("profile", "owner"):
        try:
            sync_sender(account)
        except AddressTaken as exc:
            MailAccount.objects.filter(pk=account.pk).update(last_error=str(exc))


def sync_covered_by(granted):
    """After a send grant for `granted` (an address or @domain) changed: the mirrors it covers follow."""
    lookup = {"address__iendswith": granted} if granted.startswith("@") else {"address__iexact": granted}
    for account in MailAccount.objects.filter(**lookup).exclude(sender=None).select_related("profile", "owner"):
        try:
            sync_sender(account)
        except AddressTaken as exc:
            MailAccount.objects.filter(pk=account.pk).update(last_error=str(exc))


def retire_sender(account):
    """A deleted account's mirror goes too; once it has sent mail (the log keeps it) it stays, off, without a login."""
    if not account.sender_id:
        return
    try:
        with transaction.atomic():
            SenderAccount.objects.filter(pk=account.sender_id, mailbox=True).delete()
    except ProtectedError:
        SenderAccount.objects.filter(pk=account.sender_id, mailbox=True).update(
            active=False, smtp_username="", smtp_password=""
        )


def recipients(message):
    seen, result = set(), []
    for address in [*message.to, *message.cc, *message.bcc]:
        key = address.strip().lower()
        if key and key not in seen:
            seen.add(key)
            result.append(address.strip())
    return result


def _key(address):
    """An address as the outbox stores it (dbmail.intake.outbox.enqueue), for comparing."""
    return dbmail_recipients.normalise_address(parseaddr(address)[1] or address).lower()


def submit(message):
    """Hand a `sending` message to the outbox: one email per recipient it has no email for yet.

    Returns the new outbox emails (empty when every recipient already has one).
    A retry (below) removes only the failed emails, so only their recipients
    get a new one: who already had the message never gets it twice.
    """
    with transaction.atomic():
        message = Message.objects.select_for_update().select_related("account__profile").get(pk=message.pk)
        if message.status != Message.Status.SENDING:
            return []
        handed = {_key(address) for address in message.outbox.values_list("to_address", flat=True)}
        if handed and all(_key(address) in handed for address in recipients(message)):
            return []
        to = [address for address in recipients(message) if _key(address) not in handed]
        if not message.account.enabled:
            _set(message, Message.Status.ERROR, "the account is disabled")
            return []
        if not to:
            _set(message, Message.Status.ERROR, "no recipients (to, cc and bcc are empty)")
            return []
        try:
            sync_sender(message.account)
        except AddressTaken as exc:
            _set(message, Message.Status.ERROR, f"{message.account.address}: {exc}")
            return []
        refusal = identity.sending_refusal(message.account)
        if refusal:
            _set(message, Message.Status.ERROR, refusal)
            return []
        html = message.html.read().decode("utf-8") if message.html else ""
        emails = []
        for address in to:
            message_id = rendering.new_message_id(message.account.address)
            emails.append(
                outbox.enqueue(
                    address,
                    message.subject,
                    from_email=message.account.address,
                    from_header=message.account.sender.from_header,
                    raw_message=compose(message, html, message_id),
                    message_id=message_id,
                )
            )
        message.outbox.add(*emails)
    return emails


def compose(message, html, message_id):
    """The bytes every recipient gets: To and Cc as written, never Bcc; each copy its own Message-ID."""
    email = EmailMultiAlternatives(
        subject=message.subject,
        body=message.text,
        from_email=message.account.sender.from_header,
        to=message.to,
        cc=message.cc,
        headers={"Message-ID": message_id, "Date": header_values.date()},
    )
    if html:
        email.attach_alternative(html, "text/html")
    for part in message.parts.filter(kind=MessagePart.Kind.ATTACHMENT).order_by("position"):
        with part.file.open("rb") as handle:
            email.attach(part.filename or f"attachment-{part.position}", handle.read(), part.content_type)
    return email.message().as_bytes(linesep="\r\n")


def send(message):
    """Submit the message and try to send each of its copies at once; then mirror their statuses."""
    outbox.send_at_once(submit(message))
    return refresh(message)


def refresh(message):
    """Mirror the outbox statuses onto a `sending` message; returns the message."""
    message.refresh_from_db()
    if message.status != Message.Status.SENDING:
        return message
    emails = list(message.outbox.all())
    if not emails:
        return message
    statuses = {email.status for email in emails}
    if statuses <= _SENT:
        _set(message, Message.Status.SENT, "")
    elif statuses & _FAILED and not statuses & _PENDING:
        reasons = "; ".join(f"{e.to_address}: {e.last_error or e.status}" for e in emails if e.status in _FAILED)
        _set(message, Message.Status.ERROR, reasons)
    return message


def retry(message):
    """Put an outgoing message in `error` back to `sending` for its failed recipients only; False if not in error.

    The failed emails leave the message (they stay in dbmail's log); submit
    then makes new ones for their recipients alone. The copies that were sent
    stay, so their recipients are not sent the message again.
    """
    with transaction.atomic():
        message = Message.objects.select_for_update().get(pk=message.pk)
        if message.direction != Message.Direction.OUTGOING or message.status != Message.Status.ERROR:
            return False
        message.outbox.remove(*message.outbox.filter(status__in=_FAILED))
        _set(message, Message.Status.SENDING, "")
    return True


def _set(message, status, error):
    Message.objects.filter(pk=message.pk).update(status=status, last_error=error[:5000])
    message.status, message.last_error = status, error[:5000]


def send_pending():
    """The cron step: every `sending` message is submitted (if new), sent if due, and its status mirrored."""
    done = 0
    for message in Message.objects.filter(direction=Message.Direction.OUTGOING, status=Message.Status.SENDING):
        try:
            send(message)
        except Exception:  # one broken message must not stop the others; it stays `sending` and is retried
            log.exception("mailgate: sending message %s failed", message.pk)
        done += 1
    return done
