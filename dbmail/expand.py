"""Request -> emails: one rendered TextOfEmail per recipient address.

A request is claimed with a lease (any number of hosts may run this at once),
then its recipients are streamed in chunks. Each chunk's emails and the
checkpoint past them commit in one transaction, so a crash loses at most the
chunk in flight, which the next run redoes from the checkpoint; the unique
(request, address) constraint makes a repeated chunk harmless anyway.
"""

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import recipients, rendering, unsubscribe, verp
from .models import MessageRequest, TextOfEmail

Status = TextOfEmail.Status


@dataclass
class ExpandResult:
    requests: int = 0
    emails: int = 0


def claim_request(now=None):
    """Take one due request (or one whose expander died) for this process, or None."""
    now = now or timezone.now()
    lease = timedelta(seconds=settings.DBMAIL_LEASE_SECONDS)
    with transaction.atomic():
        request = (
            MessageRequest.objects.select_for_update(skip_locked=True)
            .filter(
                Q(status=MessageRequest.Status.QUEUED, send_at__lte=now)
                | Q(status=MessageRequest.Status.EXPANDING, expand_lease_until__lte=now)
            )
            .select_related("sender")
            .order_by("send_at", "pk")
            .first()
        )
        if request is None:
            return None
        request.status = MessageRequest.Status.EXPANDING
        request.expand_token = uuid.uuid4()
        request.expand_lease_until = now + lease
        request.save(update_fields=["status", "expand_token", "expand_lease_until"])
    return request


def build_email(request, compiled, recipient, now):
    """The unsaved TextOfEmail for one recipient; a bad address or template makes it a dropped row."""
    url = unsubscribe.unsubscribe_url(recipient.email) if not recipient.error else ""
    message_id = rendering.new_message_id()
    email = TextOfEmail(
        request=request,
        account=request.sender,
        user_id=recipient.user_id,
        to_address=recipient.email[:254],
        to_name=recipient.name[:200],
        from_header=request.sender.from_header,
        envelope_sender=verp.envelope_sender(message_id, request.sender.address),
        reply_to=request.reply_to,
        message_id=message_id,
        headers=unsubscribe.list_unsubscribe_headers(url, recipient.email) if url else {},
        status_changed_at=now,
        next_attempt_at=now,
        created_at=now,
    )
    error = recipient.error
    if not error:
        try:
            rendered = compiled.render(compiled.context_for(recipient, url))
        except rendering.RenderError as exc:
            error = str(exc)
        else:
            email.subject, email.text, email.html = rendered.subject[:998], rendered.text, rendered.html
    if error:
        email.status = Status.DROPPED
        email.last_error = error
    return email


def expand(request, chunk_size=None, on_chunk=None):
    """Expand a claimed request to the end; return the number of emails it now has.

    Stops early, leaving the rest to whoever holds the request, if it was
    cancelled or its lease was taken over meanwhile.
    """
    chunk_size = chunk_size or settings.DBMAIL_EXPAND_CHUNK
    lease = timedelta(seconds=settings.DBMAIL_LEASE_SECONDS)
    token = request.expand_token
    mine = MessageRequest.objects.filter(pk=request.pk, expand_token=token, status=MessageRequest.Status.EXPANDING)
    after = (request.checkpoint or {}).get("after")
    try:
        compiled = rendering.CompiledRequest(request)
    except rendering.RenderError as exc:
        mine.update(status=MessageRequest.Status.CANCELLED, checkpoint={"error": str(exc)})
        return 0

    chunks = recipients.iter_recipients(request.recipient_set, request.recipient_params, after, chunk_size)
    for last_position, chunk in chunks:
        now = timezone.now()
        emails = [build_email(request, compiled, rcpt, now) for rcpt in chunk]
        with transaction.atomic():
            # Updating the request first locks it: a cancel waits for this chunk, then wins.
            if not mine.update(checkpoint={"after": last_position}, expand_lease_until=now + lease):
                return 0
            TextOfEmail.objects.bulk_create(emails, batch_size=1000, ignore_conflicts=True)
        if on_chunk:
            on_chunk(len(emails))

    total = request.emails.count()
    mine.update(
        status=MessageRequest.Status.EXPANDED,
        recipient_count=total,
        expanded_at=timezone.now(),
        expand_token=None,
        expand_lease_until=None,
    )
    return total


def expand_due(max_requests=None, on_chunk=None):
    """Expand every due request, one at a time; return what was done."""
    result = ExpandResult()
    while max_requests is None or result.requests < max_requests:
        request = claim_request()
        if request is None:
            break
        result.requests += 1
        result.emails += expand(request, on_chunk=on_chunk)
    return result
