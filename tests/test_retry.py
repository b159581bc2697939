"""The per-email retry policy: spool mail keeps seed 003's fixed hourly pace and its own budget."""

from datetime import timedelta

import pytest
from django.utils import timezone

from dbmail.models import SpoolFile, SpoolItem, TextOfEmail
from dbmail.send import claims, outcomes, retry

from .factories import TextOfEmailFactory

pytestmark = pytest.mark.django_db
LATER = retry.Outcome("deferred", 451, "try later")


def spooled(email):
    record = SpoolFile.objects.create(name="a.xml", sha256="0" * 64, location="a.xml")
    SpoolItem.objects.create(email=email, file=record, position=1, fld_time=timezone.now())
    return TextOfEmail.objects.get(pk=email.pk)


def test_spool_mail_waits_the_spool_interval_whatever_the_attempt(settings):
    settings.DBMAIL_SPOOL_RETRY_SECONDS = 3600
    email = spooled(TextOfEmailFactory())
    assert {retry.backoff(n, email) for n in (1, 2, 7)} == {timedelta(hours=1)}
    other = TextOfEmailFactory()
    assert retry.backoff(1, other) == timedelta(seconds=settings.DBMAIL_RETRY_BASE_SECONDS)
    assert retry.backoff(1) == retry.backoff(1, other)


def test_spool_mail_has_its_own_attempt_budget(settings):
    settings.DBMAIL_MAX_ATTEMPTS, settings.DBMAIL_SPOOL_MAX_ATTEMPTS = 5, 3
    email, other = spooled(TextOfEmailFactory()), TextOfEmailFactory()
    assert retry.give_up(LATER, 2, email).status == "deferred"
    assert retry.give_up(LATER, 3, email).status == "dropped"
    assert retry.give_up(LATER, 3, other).status == "deferred"
    assert retry.give_up(LATER, 5, other).status == "dropped"
    assert retry.give_up(LATER, 3).status == "deferred"


def test_a_final_outcome_needs_no_policy(django_assert_num_queries):
    email = TextOfEmailFactory()
    with django_assert_num_queries(0):
        assert retry.give_up(retry.Outcome("sent", 250, "ok"), 500, email).status == "sent"


def test_record_applies_the_spool_policy(settings):
    settings.DBMAIL_SPOOL_RETRY_SECONDS = 7200
    email = spooled(TextOfEmailFactory())
    batch = claims.claim(10)
    before = timezone.now()
    outcomes.record(batch.emails[0], batch.token, LATER)
    email.refresh_from_db()
    assert email.status == "deferred"
    assert before + timedelta(seconds=7200) <= email.next_attempt_at <= timezone.now() + timedelta(seconds=7200)
