"""What one recipient will get, built by the same code expansion uses (dbmail.intake.expand.build_email)."""

import dataclasses
from dataclasses import dataclass

from django.db.models import Q
from django.utils import timezone

from dbmail import states
from dbmail.content import addresses, recipients, rendering
from dbmail.intake import expand
from dbmail.models import TextOfEmail


@dataclass
class Preview:
    email: TextOfEmail  # unsaved, or the stored email when `sent`
    recipient: recipients.Recipient
    index: int  # position among deliverable recipients, or among the request's stored emails
    has_next: bool
    sent: bool = False  # the email as it was made and sent, not rebuilt from today's audience


def find(request, index=0, address=""):
    """The recipient at `index` (0-based) or the first whose address contains `address`, or None."""
    address = addresses.key_fragment(address) if address.strip() else ""  # keys hold A-labels: "bücher" finds them
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


def for_page(request, index=0, address=""):
    """What the request page shows: the stored emails once it has some, else the mail rebuilt now.

    After expansion the audience may have changed (someone unsubscribed, a
    group gained members): rebuilding would show mail nobody got. So a
    request with emails shows them, in the order they were made.
    """
    unsent = (states.RequestStatus.DRAFT, states.RequestStatus.QUEUED)
    if request.status not in unsent and request.emails.exists():
        return stored(request, index, address)
    return build(request, index, address)


def address_contains(term):
    """Q: emails whose address contains `term`, as typed or as stored (bücher finds ann@xn--bcher-kva.example).

    A request's emails keep their addresses in their delivery spelling (dbmail.content.addresses);
    those made before that rule keep theirs as they were written, which the term as typed finds.
    """
    found = Q(to_address__icontains=term)
    stored_form = addresses.key_fragment(term)
    return found | Q(to_address__icontains=stored_form) if stored_form != term.lower() else found


def stored(request, index=0, address=""):
    """The Preview of the request's `index`-th stored email (or the first whose address contains `address`)."""
    emails = request.emails.order_by("pk")
    address = address.strip()
    if address:
        email = emails.filter(address_contains(address)).first()
        if email is None:
            return None
        index = emails.filter(pk__lt=email.pk).count()
    else:
        email = emails[index : index + 1].first() if index >= 0 else None
        if email is None:
            return None
    has_next = emails.filter(pk__gt=email.pk).exists()
    rcpt = recipients.Recipient(email=email.to_address, name=email.to_name)
    return Preview(email, rcpt, index, has_next, sent=True)


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
    context = compiled.context_for(recipients.Recipient(email=""), unsubscribe_url="")
    context["web_version_url"] = ""  # the page is the web version: no link to itself
    return compiled.render(context)


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
        row.raw_message = to_email_message(row, attachments=files, sign=False).message().as_bytes()
        row.save(update_fields=["raw_message"])
    outbox.send_after_commit([row])
    return row


def sample(template, user, unsubscribe_url="#unsubscribe"):
    """`template` (a request, saved template or starter: subject, bodies, body_format) rendered for `user`.

    What the compose and template pages show while typing: the signed-in user
    as the recipient, the unsubscribe footer where the body has no link of its
    own. Raises rendering.RenderError.
    """
    compiled = rendering.CompiledRequest(template)
    me = recipients.Recipient(
        email=user.email or "you@example.org",
        name=user.get_full_name(),
        first_name=user.first_name,
        last_name=user.last_name,
        username=user.get_username(),
    )
    return compiled.render(compiled.context_for(me, unsubscribe_url=unsubscribe_url))
