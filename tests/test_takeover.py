"""Rows taken over from a dead sender's claim: only those it may have sent are marked possibly delivered.

In one process against PostgreSQL: a claim is made and left "sending" as a killed sender
leaves it (some outcomes committed, in send order), its lease runs out, and other claims
take the rows over. A real killed dbmail_cron against the SMTP test server: test_kill_rounds.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from dbmail.models import DeliveryEvent, MessageRequest, SenderAccount, TextOfEmail
from dbmail.send import claims, dbworker, outcomes, retry, takeover

from .factories import MessageRequestFactory, queue_emails

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status
WINDOW = 2  # so K = 3


@pytest.fixture(autouse=True)
def small_window(settings):
    settings.DBMAIL_OUTCOME_WINDOW = WINDOW
    assert dbworker.crash_window() == WINDOW + 1


def mixed_queue():
    """Emails whose send order (account, request, id) is not their id order."""
    first = SenderAccount.objects.create(address="a@example.org")
    second = SenderAccount.objects.create(address="b@example.org")
    older, newer = (MessageRequestFactory(sender=first, status=MessageRequest.Status.EXPANDED) for _ in range(2))
    queue_emails(4, start=0, account=second)  # the lowest ids, sent last
    queue_emails(3, start=10, account=first, request=newer)
    queue_emails(3, start=20, account=first, request=older)
    queue_emails(2, start=30, account=first)  # no request: first of all
    return sorted(TextOfEmail.objects.all(), key=takeover.SEND_ORDER)


def die(claim, committed):
    """The sender of `claim` is killed after the outcomes of its first `committed` emails were committed."""
    sent = [outcomes.as_row(e, claim.token, retry.Outcome(retry.SENT, 250, "ok")) for e in claim.emails[:committed]]
    if sent:
        outcomes.write(sent)
    TextOfEmail.objects.filter(claim_token=claim.token).update(leased_until=timezone.now() - timedelta(seconds=1))


def marked():
    return set(TextOfEmail.objects.filter(possibly_delivered__gt=0).values_list("pk", flat=True))


def test_the_first_k_unrecorded_rows_in_send_order_are_marked_and_no_others():
    order = mixed_queue()
    dead = claims.claim(100)
    assert [e.pk for e in dead.emails] == [e.pk for e in order]  # the order a takeover recomputes
    die(dead, committed=4)

    again = claims.claim(100)
    assert {e.pk for e in again.emails} == {e.pk for e in order[4:]}
    assert marked() == {e.pk for e in order[4:7]}
    events = DeliveryEvent.objects.filter(text=takeover.TEXT)
    assert sorted(events.values_list("email_id", flat=True)) == sorted(e.pk for e in order[4:7])
    assert set(events.values_list("kind", "outcome")) == {(DeliveryEvent.Kind.ATTEMPT, Status.SENDING)}
    # Marked once: the committed ones were sent once, the rest not yet.
    assert set(TextOfEmail.objects.filter(pk__in=marked()).values_list("possibly_delivered", flat=True)) == {1}


def test_a_dead_claim_taken_over_in_parts_is_marked_once():
    order = mixed_queue()
    dead = claims.claim(100)
    die(dead, committed=0)
    taken = set()
    while len(taken) < len(order):  # two rows a claim, in whatever order the stale scan meets them
        part = claims.claim(2)
        assert part.emails
        taken |= {e.pk for e in part.emails}
    assert marked() == {e.pk for e in order[:3]}
    assert not TextOfEmail.objects.filter(claim_token=takeover.JUDGED).exists()  # every row has a live claim now


def test_rows_given_back_by_a_clean_stop_are_not_marked():
    mixed_queue()
    stopped, dead = claims.claim(6), claims.claim(100)
    stopped.release()  # SIGTERM: its claims are given back
    die(dead, committed=0)
    assert len(claims.claim(100).emails) == TextOfEmail.objects.count()
    assert marked() == {e.pk for e in dead.emails[:3]}
    assert DeliveryEvent.objects.filter(text=takeover.TEXT).count() == 3


def test_a_dead_senders_claims_are_read_in_the_order_it_made_them():
    mixed_queue()
    made = takeover.tokens()
    sending = claims.claim(5, token=next(made))
    ahead = claims.claim(100, token=next(made))  # claimed while the first was sent: never started
    die(sending, committed=3)
    die(ahead, committed=0)
    claims.claim(100)
    # K = 3 for the sender: the 2 left of the claim it was sending, then 1 of the next (it may have begun).
    assert marked() == {e.pk for e in sending.emails[3:] + ahead.emails[:1]}


def test_two_dead_senders_are_judged_each_on_its_own():
    mixed_queue()
    one, other = claims.claim(6), claims.claim(100)  # a token each from a sender of its own
    die(one, committed=1)
    die(other, committed=0)
    claims.claim(100)
    assert marked() == {e.pk for e in one.emails[1:4] + other.emails[:3]}


def test_a_dead_senders_rows_of_an_inactive_account_are_marked_as_they_go_back():
    order = mixed_queue()
    dead = claims.claim(100)
    die(dead, committed=1)
    SenderAccount.objects.filter(address="a@example.org").update(active=False)  # the first 8 in send order
    claims.claim(100)
    assert marked() == {e.pk for e in order[1:4]}
    back = TextOfEmail.objects.filter(pk__in=[e.pk for e in order[1:8]])
    assert set(back.values_list("status", "claim_token")) == {(Status.DEFERRED, None)}
