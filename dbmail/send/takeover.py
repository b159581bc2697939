"""Rows taken over from a sender that stopped without giving them back (killed, its host lost).

Such a sender may have sent some of them: the server took the message, but the outcome
was not committed yet. Which ones can be told from the rows themselves:

- a claim's rows are sent in one order their own columns give (SEND_ORDER), and their
  outcomes are committed in that order, each commit taking the row out of "sending";
- no more than dbworker.crash_window() messages can have gone out with no outcome committed.

So among a dead claim's rows still "sending", only the first crash_window() in send order
may have gone out: those are marked possibly delivered (the counter, and a line in their
log) in the transaction that takes them over; the rest were never sent and are not marked.
Rows a sender gives back itself (a clean stop, a lost database connection) are no longer
"sending" under its token, so nothing of theirs is ever marked.

A dead claim's rows may be taken over by several claims (a claim's limit, its byte budget
or the pacer stops within them, or two senders take them at once). The first takeover
judges them all: the rows past the first crash_window() that it does not take get the
token JUDGED, and rows taken over from JUDGED are not marked; rows within the window that
it does not take keep their token, and whoever takes them marks them.
"""

import uuid

from django.db.models import F, Value, Window
from django.db.models.functions import Coalesce, RowNumber

from dbmail import states
from dbmail.models import DeliveryEvent, TextOfEmail
from dbmail.send import dbworker

Status = states.EmailStatus

# The token of the rest of a dead claim, already judged never sent. Nobody claims under it
# (claims use uuid4), so a row under it is still claimable once its lease has run out.
JUDGED = uuid.UUID(int=0)

TEXT = "taken over from a sender that stopped: possibly delivered"


def SEND_ORDER(email):
    """The order a claim's emails are sent in (dbmail.send.loop): a request's emails together, attachments read once."""
    return (email.account_id or 0, email.request_id or 0, email.pk)


def _send_order():
    """SEND_ORDER in SQL."""
    return [Coalesce("account_id", Value(0)), Coalesce("request_id", Value(0)), F("pk")]


def judge(ids, now):
    """Mark those of `ids` that their dead sender may have sent; returns their pks.

    `ids`: rows still "sending" under a lease that ran out, locked by the caller's transaction
    to be taken over. Run only when a claim takes such rows over: the usual claim has none.
    """
    dead = TextOfEmail.objects.filter(pk__in=ids).exclude(claim_token=JUDGED).values("claim_token")
    held = TextOfEmail.objects.filter(claim_token__in=dead, status=Status.SENDING)
    place = Window(RowNumber(), partition_by=F("claim_token"), order_by=_send_order())
    first = set(held.annotate(place=place).filter(place__lte=dbworker.crash_window()).values_list("pk", flat=True))
    if not first:
        return []
    marked = sorted(pk for pk in ids if pk in first)
    if marked:
        TextOfEmail.objects.filter(pk__in=marked).update(possibly_delivered=F("possibly_delivered") + 1)
        DeliveryEvent.objects.bulk_create(
            DeliveryEvent(email_id=pk, at=now, kind=DeliveryEvent.Kind.ATTEMPT, outcome=Status.SENDING, text=TEXT)
            for pk in marked
        )
    # The rest of those claims was never sent: judged now, for whoever takes it over later. Rows
    # another sender is taking over at this moment are skipped (it judges them itself).
    rest = held.filter(leased_until__lte=now).exclude(pk__in=first).exclude(pk__in=ids)
    rest = list(rest.select_for_update(skip_locked=True).values_list("pk", flat=True))
    if rest:
        TextOfEmail.objects.filter(pk__in=rest, status=Status.SENDING).update(claim_token=JUDGED)
    return marked
