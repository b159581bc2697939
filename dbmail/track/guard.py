"""The reputation guard: a request that bounces or draws complaints too much is paused, for a person to decide.

Mailbox providers judge a sender by its bounces and complaints (Gmail and
Yahoo want complaints under 0.3 %). Once a request has DBMAIL_GUARD_MIN_SENT
emails sent, it is paused when more than DBMAIL_GUARD_BOUNCE_PERCENT of them
bounced hard, or more than DBMAIL_GUARD_COMPLAINT_PERCENT drew a complaint.
The figures are the dashboard's (dbmail.rollup): "hard_bounced" counts the
emails reported bounced for good (the address does not exist, the domain
refuses it), each once, "sent" what our server accepted. Soft bounces (the
MTA gave up on a full mailbox, a server down for days) count as "bounced"
but not here: they say little of the list's quality, and providers judge
senders by their hard bounces.

The check runs where tracking events are applied (dbmail.track.apply), in
the same transaction, for the requests whose emails the batch moved to
bounced or complained: the batch that takes a request over the threshold
pauses it. Paused (dbmail.states.PAUSE_REQUEST), nothing more of it is made
or sent: its waiting emails are not claimed (dbmail.send.claims). Its page
in the comm panel says why and offers Resume or Cancel; both are recorded
with who and when (an AuditEvent of the request's history). After a resume the guard judges only the
mail sent since, with the same minimum; addresses suppressed meanwhile (a
hard bounce, a complaint) stay suppressed: their waiting emails are cancelled.
"""

from django.db import transaction
from django.utils import timezone

from dbmail import audit, rollup, states
from dbmail.conf import settings as conf
from dbmail.content.addresses import mailbox_key
from dbmail.models import HARD_BOUNCED, AuditEvent, MessageRequest, Suppression, TextOfEmail

E = states.EmailStatus
COUNTED = (E.SENT, HARD_BOUNCED, E.COMPLAINED)
# What moves a request towards the thresholds: only these outcomes need the check (and a hard bounce).
ALARMING = (E.BOUNCED, E.COMPLAINED)


def since_baseline(counts, baseline):
    """The counts less what they were when the request was last resumed."""
    baseline = baseline or {}
    return {name: max(0, (counts.get(name) or 0) - (baseline.get(name) or 0)) for name in COUNTED}


def judge(counts):
    """Why counts of sent, hard-bounced and complained mail call for a pause, in words; "" when they do not."""
    sent = counts.get(E.SENT) or 0
    if sent < conf.DBMAIL_GUARD_MIN_SENT:
        return ""
    for name, limit, words in (
        (HARD_BOUNCED, conf.DBMAIL_GUARD_BOUNCE_PERCENT, "bounced hard"),
        (E.COMPLAINED, conf.DBMAIL_GUARD_COMPLAINT_PERCENT, "drew a complaint"),
    ):
        share = 100 * (counts.get(name) or 0) / sent
        if share > limit:
            return (
                f"{counts.get(name):,} of {sent:,} emails sent {words} ({share:.1f} %, above "
                f"{_percent(limit)} %): paused to protect the sender's reputation"
            )
    return ""


def _percent(value):
    return f"{value:g}"


def check(request_ids, now=None):
    """Pause the requests among `request_ids` whose figures passed a threshold; returns their pks.

    Inside the transaction that wrote the events' outcomes (their roll-up counts are visible to it).
    """
    ids = sorted({pk for pk in request_ids if pk})
    if not ids:
        return []
    requests = MessageRequest.objects.filter(pk__in=ids, status__in=states.PAUSE_REQUEST.sources).only(
        "pk", "status", "guard_baseline"
    )
    candidates = {r.pk: r for r in requests}
    if not candidates:
        return []
    counts = rollup.per_request(candidates)
    paused = []
    for pk, request in candidates.items():
        reason = judge(since_baseline(counts.get(pk, {}), request.guard_baseline))
        if reason and pause(request, reason, now):
            paused.append(pk)
    return paused


def pause(request, reason, now=None):
    """Pause a request (by the guard); False if it was not in a state that can be paused."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = MessageRequest.objects.select_for_update().filter(pk=request.pk)
        before = locked.values_list("status", flat=True).first()
        moved = states.PAUSE_REQUEST.update(
            locked, paused_reason=reason[:2000], paused_at=now, paused_from=before or ""
        )
        if moved:
            audit.program_step(audit.GUARD, AuditEvent.Kind.PAUSE, request, reason, at=now)
    return bool(moved)


def resume(request, user=None, now=None, action="resume"):
    """A person resumes a paused request: it goes on where it was; returns what was done in words, or ""."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = MessageRequest.objects.select_for_update().filter(pk=request.pk, status=states.RequestStatus.PAUSED)
        current = locked.only("pk", "paused_from", "expanded_at").first()
        if current is None:
            return ""
        # Still to expand: queued again, and expansion goes on from its checkpoint.
        expanded = current.paused_from == states.RequestStatus.EXPANDED or (
            not current.paused_from and current.expanded_at is not None
        )
        transition = states.RESUME_SENDING if expanded else states.RESUME_EXPANSION
        baseline = {name: n for name, n in rollup.per_request([request.pk]).get(request.pk, {}).items() if n}
        transition.update(
            MessageRequest.objects.filter(pk=request.pk),
            paused_reason="",
            paused_at=None,
            paused_from="",
            guard_baseline=baseline,
            expand_token=None,
            expand_lease_until=None,
        )
        stopped = _cancel_suppressed(request, user)
        text = "resumed; the guard now judges only the mail sent from here"
        if stopped:
            text += f"; {stopped:,} email{'s' * (stopped != 1)} to addresses suppressed meanwhile cancelled"
        audit.record(user, action, request, detail=text, kind=AuditEvent.Kind.RESUME, by=audit.GUARD, at=now)
    request.refresh_from_db(fields=["status", "paused_reason", "paused_at", "guard_baseline"])
    return text


def _cancel_suppressed(request, user):
    """Cancel the request's waiting emails to addresses on the suppression list (each with its event); how many."""
    # The list holds mailbox keys, the emails their addresses as written: each is keyed here, a chunk at a time
    # (a join on lower(to_address) would miss anna@bücher.example suppressed as anna@xn--bcher-kva.example).
    waiting = TextOfEmail.objects.filter(request_id=request.pk, status__in=states.WAITING)
    stopped, chunk = [], []
    for pk, address in waiting.values_list("pk", "to_address").iterator(chunk_size=_KEY_CHUNK):
        chunk.append((pk, mailbox_key(address)))
        if len(chunk) == _KEY_CHUNK:
            stopped += _suppressed_of(chunk)
            chunk = []
    stopped += _suppressed_of(chunk)
    return TextOfEmail.cancel(waiting.filter(pk__in=stopped), actor=user) if stopped else 0


_KEY_CHUNK = 5000


def _suppressed_of(keyed):
    """The pks of (pk, mailbox key) pairs whose key is on the suppression list."""
    if not keyed:
        return []
    found = set(Suppression.objects.filter(address__in={key for _, key in keyed}).values_list("address", flat=True))
    return [pk for pk, key in keyed if key in found]
