from datetime import timedelta

import pytest
from django.db.models import Q
from django.utils import timezone

from dbmail.models import TextOfEmail
from dbmail.send import claims

from .factories import TextOfEmailFactory

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status


def test_claim_skips_live_leases_and_takes_expired_ones():
    live = TextOfEmailFactory()
    dead = TextOfEmailFactory()
    first = claims.claim(10)
    assert {e.pk for e in first.emails} == {live.pk, dead.pk}
    assert claims.claim(10).emails == []  # both held
    TextOfEmail.objects.filter(pk=dead.pk).update(leased_until=timezone.now() - timedelta(seconds=1))
    second = claims.claim(10)
    assert [e.pk for e in second.emails] == [dead.pk]
    dead.refresh_from_db()
    assert dead.attempts == 2 and dead.claim_token == second.token


def test_release_gives_unsent_rows_back_as_they_were():
    queued = TextOfEmailFactory()
    deferred = TextOfEmailFactory(status=Status.DEFERRED, attempts=2)
    claim = claims.claim(10)
    claim.release()
    queued.refresh_from_db()
    deferred.refresh_from_db()
    assert (queued.status, queued.attempts) == (Status.QUEUED, 0)
    assert (deferred.status, deferred.attempts) == (Status.DEFERRED, 2)
    assert queued.claim_token is None and deferred.leased_until is None


def test_lease_is_renewed_when_half_spent(settings):
    settings.DBMAIL_LEASE_SECONDS = 100
    email = TextOfEmailFactory()
    claim = claims.claim(1)
    claim.lease_until = timezone.now() + timedelta(seconds=10)  # as if 90 s had passed
    claim.renew_if_needed()
    email.refresh_from_db()
    assert email.leased_until > timezone.now() + timedelta(seconds=95)


def test_a_scoped_claim_takes_matching_rows_due_or_not_and_claim_one():
    mine = TextOfEmailFactory(envelope_sender="club@example.org", next_attempt_at=timezone.now() + timedelta(hours=1))
    other = TextOfEmailFactory()
    batch = claims.claim(10, scope=Q(envelope_sender="club@example.org"))
    assert [e.pk for e in batch.emails] == [mine.pk]
    assert claims.claim_one(mine) is None  # already held
    one = claims.claim_one(other)
    assert [e.pk for e in one.emails] == [other.pk]
    other.refresh_from_db()
    assert other.status == Status.SENDING and other.attempts == 1


def test_a_claim_after_a_position_skips_what_lies_before_it():
    now = timezone.now()
    early = TextOfEmailFactory(next_attempt_at=now - timedelta(minutes=2))
    same_time = TextOfEmailFactory.create_batch(2, next_attempt_at=now - timedelta(minutes=1))
    first = claims.claim(2)
    assert [e.pk for e in first.emails] == [early.pk, same_time[0].pk]
    assert first.after == (same_time[0].next_attempt_at, same_time[0].pk)
    first.release()
    rest = claims.claim(10, after=first.after)
    assert [e.pk for e in rest.emails] == [same_time[1].pk]  # the released ones lie behind the position
    assert {e.pk for e in claims.claim(10).emails} == {early.pk, same_time[0].pk}
