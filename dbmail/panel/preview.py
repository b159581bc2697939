"""What one recipient will get, built by the same code expansion uses (dbmail.intake.expand.build_email)."""

import dataclasses
from dataclasses import dataclass

from django.utils import timezone

from dbmail import states
from dbmail.content import recipients, rendering
from dbmail.intake import expand
from dbmail.models import TextOfEmail


@dataclass
class Preview:
    email: TextOfEmail  # unsaved
    recipient: recipients.Recipient
    index: int  # position among deliverable recipients
    has_next: bool


def find(request, index=0, address=""):
    """The recipient at `index` (0-based) or the first whose address contains `address`, or None."""
    address = address.strip().lower()
    position = -1
    found = None
    seen = set()
    for _, chunk in recipients.iter_recipients(request.recipient_set, request.recipient_params):
        for rcpt in chunk:
            if rcpt.error or rcpt.key in seen:
                continue
            seen.add(rcpt.key)
            position += 1
            if found is not None:
                return found[0], found[1], True
            if (address and address in rcpt.key) or (not address and position == index):
                found = (rcpt, position)
    return (found[0], found[1], False) if found else (None, None, False)


def build(request, index=0, address=""):
    """A Preview, or None when no recipient matches. Raises rendering.RenderError on template errors."""
    rcpt, position, has_next = find(request, index, address)
    if rcpt is None:
        return None
    compiled = rendering.CompiledRequest(request)
    email = expand.build_email(request, compiled, rcpt, timezone.now())
    return Preview(email, rcpt, position, has_next)


def for_test(request, recipient, user):
    """The preview recipient's mail addressed to `user`: their own address, variables and unsubscribe link."""
    me = dataclasses.replace(
        recipient,
        email=recipients.normalise_address(user.email),
        name=recipient.name,
        user_id=user.pk,
        error=recipients.address_error(user.email),
    )
    compiled = rendering.CompiledRequest(request)
    return expand.build_email(request, compiled, me, timezone.now())


def public_version(request):
    """The request rendered with no recipient at all: the public web version."""
    compiled = rendering.CompiledRequest(request)
    return compiled.render(compiled.context_for(recipients.Recipient(email=""), unsubscribe_url=""))


def send_test(request, recipient, user):
    """Send `recipient`'s mail to `user` now, with a [TEST] subject, through the ad-hoc path (dbmail.intake.outbox).

    Returns the outbox TextOfEmail. Attachments go along: the message is then
    stored whole (raw) so the test is exactly what recipients will get.
    """
    from dbmail.content import attachments
    from dbmail.intake import outbox
    from dbmail.send.message import to_email_message

    built = for_test(request, recipient, user)
    if built.status == states.REFUSE.target:
        raise rendering.RenderError(built.last_error)
    row = outbox.enqueue(
        to=built.to_address,
        subject=f"[TEST] {built.subject}",
        text=built.text,
        html=built.html,
        from_email=request.sender.from_header,
        reply_to=request.reply_to,
        headers=built.headers,
        user=user,
    )
    files = attachments.read(request.pk)
    if files and row.status == states.ENQUEUE.target:
        row.raw_message = to_email_message(row, attachments=files).message().as_bytes()
        row.save(update_fields=["raw_message"])
    outbox.send_after_commit([row])
    return row
