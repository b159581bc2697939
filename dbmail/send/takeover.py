"""Rows taken over from a sender that stopped without giving them back (killed, its host lost).

Such a sender may have sent some of them: the server took the message, but the outcome
was not committed yet. Which ones can be told from the rows themselves:

- a sender's claims are sent one after the other in the order it made them, and their
  tokens say that order: the sender's 8 random bytes, then a count (tokens());
- a claim's rows are sent in an order their own columns give (SEND_ORDER);
- outcomes are committed in the order of the answers, each commit taking its row out of
  "sending", and no more than dbworker.crash_window() messages can have gone out with no
  outcome committed.

So among a dead sender's rows still "sending", in claim and then send order, only the first
crash_window() may have gone out: those are marked possibly delivered (the counter, and a line
in their log) in the transaction that takes them over. The rest were never sent (the claim it
had made ahead among them) and are not marked. Rows a sender gives back itself (a clean stop,
a lost database connection) are no longer "sending", so nothing of theirs is marked.

A dead sender's rows may be taken over by several claims (a claim's limit, its byte budget or
the pacer stops within them, or two senders take them at once). The first takeover judges them
all: the rows past the first crash_window() whose lease ran out too and that it does not take
get the token JUDGED, and rows taken over from JUDGED are not marked; rows within the window
that it does not take keep their token, and whoever takes them marks them. What the first
cannot judge is a claim whose lease has not run out yet (the one the sender made ahead, whose
lease began later): when it is taken over later, its first rows are marked as if it had been
started. docs/scaling.md#exactly-once-on-any-number-of-hosts says what that costs.
"""

import itertools
import os
import uuid

from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce

from dbmail import states
from dbmail.models import DeliveryEvent, TextOfEmail
from dbmail.send import dbworker

Status = states.EmailStatus

# The token of the rest of a dead sender's rows, judged never sent. Nobody claims under it
# (tokens() never makes it), so a row under it is claimable as soon as its lease has run out.
JUDGED = uuid.UUID(int=0)

TEXT = "taken over from a sender that stopped: possibly delivered"

_SENDER_BYTES = 8


def tokens():
    """The claim tokens of one sender, in the order it claims: its own random bytes, then a count."""
    sender = os.urandom(_SENDER_BYTES)
    for n in itertools.count(1):
        yield uuid.UUID(bytes=sender + n.to_bytes(16 - _SENDER_BYTES, "big"))


def SEND_ORDER(email):
    """The order a claim's emails are sent in (dbmail.send.loop): a request's emails together, attachments read once."""
    return (email.account_id or 0, email.request_id or 0, email.pk)


def _in_order():
    """Claim order (the token), then SEND_ORDER, in SQL."""
    return [F("claim_token"), Coalesce("account_id", Value(0)), Coalesce("request_id", Value(0)), F("pk")]


def _sender(token):
    return token.bytes[:_SENDER_BYTES]


def _rows_of(senders):
    """Rows under any token of `senders` (their bytes): a range of tokens each."""
    rows = Q()
    for sender in senders:
        low, high = (uuid.UUID(bytes=sender + bytes([b]) * (16 - _SENDER_BYTES)) for b in (0, 255))
        rows |= Q(claim_token__range=(low, high))
    return rows


def judge(ids, now):
    """Mark those of `ids` that their dead sender may have sent; returns their pks.

    `ids`: rows still "sending" under a lease that ran out, locked by the caller's transaction
    to be taken over. Run only when a claim takes such rows over: the usual claim has none.
    """
    dead = TextOfEmail.objects.filter(pk__in=ids, claim_token__isnull=False).exclude(claim_token=JUDGED)
    dead = set(dead.values_list("claim_token", flat=True))
    if not dead:
        return []
    senders = {_sender(token) for token in dead}
    first = set()
    for sender in senders:  # one, nearly always
        rows = TextOfEmail.objects.filter(_rows_of([sender]), status=Status.SENDING).order_by(*_in_order())
        first |= set(rows.values_list("pk", flat=True)[: dbworker.crash_window()])
    marked = sorted(pk for pk in ids if pk in first)
    if marked:
        TextOfEmail.objects.filter(pk__in=marked).update(possibly_delivered=F("possibly_delivered") + 1)
        DeliveryEvent.objects.bulk_create(
            DeliveryEvent(email_id=pk, at=now, kind=DeliveryEvent.Kind.ATTEMPT, outcome=Status.SENDING, text=TEXT)
            for pk in marked
        )
    # The rest was never sent: judged now, for whoever takes it over later. Rows another sender is
    # taking over at this moment are skipped (it judges them itself), and so are live leases.
    rest = TextOfEmail.objects.filter(_rows_of(senders), status=Status.SENDING, leased_until__lte=now)
    rest = rest.exclude(pk__in=first).exclude(pk__in=ids)
    rest = list(rest.select_for_update(skip_locked=True).values_list("pk", flat=True))
    if rest:
        TextOfEmail.objects.filter(pk__in=rest, status=Status.SENDING).update(claim_token=JUDGED)
    return marked
