"""dbmail.send.backoff: which answers are a destination pushing back, halving, the floor, recovering."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from dbmail import states
from dbmail.models import PacingBucket, SendingProblem, TextOfEmail
from dbmail.send import backoff, buckets, destinations, retry
from dbmail.send import loop as sending

from .factories import SenderAccountFactory, TextOfEmailFactory

Status = states.EmailStatus


@pytest.mark.parametrize(
    "outcome,pushback",
    [
        (retry.by_code(421, "4.7.0 try again later", "rcpt"), True),
        (retry.by_code(451, "4.7.1 rate limited, try later", "rcpt"), True),
        (retry.by_code(450, "4.7.28 unusual rate of mail", "message"), True),
        (retry.by_code(421, "4.3.2 closing", "data"), True),  # a 421 about this transaction
        (retry.by_code(451, "4.3.0 try later", "rcpt"), False),
        (retry.by_code(452, "4.2.2 mailbox full", "rcpt"), False),
        (retry.by_code(550, "5.7.1 rate limited", "rcpt"), False),  # permanent: not a pace
        (retry.by_code(250, "2.0.0 ok 4.7.0", "message"), False),
        (retry.session(421, "MAIL FROM: 421 4.7.0 closing", stage="mail"), False),  # the relay's, not a destination's
        (retry.session(421, "cannot connect: 421 4.7.0", reset=True, stage="connect"), False),
        (retry.Outcome(retry.DEFERRED, None, "outcome unknown (possibly delivered)", stage="message"), False),
    ],
)
def test_what_counts_as_pushing_back(outcome, pushback):
    assert backoff.is_pushback(outcome) is pushback


def bucket(configured=600.0):
    return PacingBucket(name="gmail", tokens=10, refilled_at=timezone.now(), configured_per_minute=configured)


def test_a_pushback_halves_the_rate_once_per_window_and_pauses_the_group(settings):
    settings.DBMAIL_BACKOFF_RECOVERY_PERCENT = 10
    b, now = bucket(), timezone.now()
    assert backoff.push_back(b, "421 4.7.0 slow down", now)
    assert (b.slowed_per_minute, b.slowed_since, b.pushbacks) == (300, now, 1)
    assert b.tokens == -300 / 60 * backoff.HALVING_WINDOW.total_seconds()  # nothing for the window, then 300 a minute
    assert not backoff.push_back(b, "again", now + timedelta(seconds=10))  # the same burst of answers
    assert b.slowed_per_minute == pytest.approx(300 + 60 * 10 / 60)  # recovery starts again from where it is
    assert backoff.push_back(b, "again", now + backoff.HALVING_WINDOW + timedelta(seconds=10))
    assert b.slowed_per_minute == pytest.approx((310 + 30) / 2)
    assert b.pushbacks == 3 and b.slowed_since == now and b.pushback_text == "again"


def test_the_rate_never_falls_below_the_floor(settings):
    settings.DBMAIL_BACKOFF_FLOOR_PER_MINUTE = 50
    b, now = bucket(), timezone.now()
    for n in range(10):
        backoff.push_back(b, "421", now + n * backoff.HALVING_WINDOW)
    assert b.slowed_per_minute == 50


def test_it_recovers_a_tenth_of_its_rate_a_minute_back_to_the_configured_rate(settings):
    settings.DBMAIL_BACKOFF_RECOVERY_PERCENT = 10
    b, now = bucket(), timezone.now()
    backoff.push_back(b, "421", now)
    assert backoff.effective_rate(b, now + timedelta(minutes=1)) == pytest.approx(360)
    assert backoff.is_slowed(b, now + timedelta(minutes=4))
    assert backoff.recovered_at(b, now) == now + timedelta(minutes=5)
    assert backoff.effective_rate(b, now + timedelta(minutes=5)) == 600
    assert not backoff.is_slowed(b, now + timedelta(minutes=6))


def test_a_group_without_a_rate_backs_off_from_the_start_rate_and_recovers_to_no_limit(settings):
    settings.DBMAIL_BACKOFF_START_PER_MINUTE = 400
    b, now = bucket(configured=0), timezone.now()
    assert backoff.effective_rate(b, now) == 0
    backoff.push_back(b, "421", now)
    assert backoff.effective_rate(b, now) == 200
    assert backoff.effective_rate(b, now + timedelta(hours=1)) == 0  # no limit again


@pytest.mark.django_db
def test_the_pushback_is_recorded_for_every_host():
    now = timezone.now()
    assert buckets.push_back("gmail", 600, "421 4.7.0 slow down", now) == (True, 300)
    row = PacingBucket.objects.get(name="gmail")
    assert row.slowed_per_minute == 300 and row.tokens < 0 and row.pushback_text == "421 4.7.0 slow down"
    assert [b.name for b in buckets.slowed(now + timedelta(seconds=1))] == ["gmail"]
    assert buckets.slowed(now + timedelta(hours=1)) == []


# --- while sending: the group waits, the others go on -----------------------------------------------


@pytest.fixture
def mixed():
    """Three emails to outlook.com, three to gmail.com, three to example.net, interleaved."""
    emails = []
    for n in range(3):
        for domain in ("outlook.com", "gmail.com", "example.net"):
            emails.append(TextOfEmailFactory(to_address=f"r{n}@{domain}", dest_group=None))
    return emails


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("answer", ["421 4.7.0 try again later", "451 4.7.1 rate limited"])
def test_a_pushback_slows_its_group_and_the_others_keep_full_speed(smtp_server, mixed, answer):
    smtp_server.script("@outlook.com", answer)
    result = sending.send_due()
    assert result.sent == 6  # gmail and example.net, all of it
    outlook = TextOfEmail.objects.filter(to_address__endswith="@outlook.com").order_by("pk")
    first, *rest = outlook
    assert first.status == Status.DEFERRED and answer.split(" ", 1)[1] in first.last_error
    assert first.attempts == (0 if answer.startswith("421") else 1)  # a 421 is no attempt; a 4xx to RCPT is
    # The rest of its claimed mail was given back untried: no attempt, due as before.
    assert [(e.status, e.attempts) for e in rest] == [(Status.QUEUED, 0), (Status.QUEUED, 0)]
    assert len(smtp_server.refused) == 1
    microsoft = PacingBucket.objects.get(name="microsoft")
    assert microsoft.slowed_per_minute == 150  # the built-in 300 a minute, halved
    assert not PacingBucket.objects.filter(name="gmail", slowed_per_minute__isnull=False).exists()
    # A destination's pushback is not a problem of the server or of the sender account.
    assert not SendingProblem.objects.exists()
    assert any("destination microsoft pushed back" in line for line in result.problems)


@pytest.mark.django_db(transaction=True)
def test_the_rest_of_a_group_goes_back_before_anything_more_is_sent(smtp_server):
    """A takeover after a kill judges the rows still "sending" in send order (dbmail.send.takeover):
    mail held back by a pushback must leave that state before the mail tried after it, not with the
    batch's end, or the takeover's window is spent on it and a duplicate past it goes unmarked.
    PostgreSQL numbers its transactions in order: each row's xmin says which one wrote it last."""
    account = SenderAccountFactory()
    # In send order: two to outlook.com, 60 others (their outcomes committed as they go), one more to outlook.com.
    addresses = ["a@outlook.com", "b@outlook.com", *(f"r{n}@example.net" for n in range(60)), "c@outlook.com"]
    emails = [
        TextOfEmailFactory(account=account, to_address=address, dest_group=destinations.group_of(address))
        for address in addresses
    ]
    smtp_server.script("@outlook.com", "421 4.7.0 try again later")
    assert sending.send_due().sent == 60
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text::bigint FROM dbmail_textofemail")
        written = dict(cursor.fetchall())
    first, *held = [e.pk for e in emails if e.to_address.endswith("@outlook.com")]
    after = [e.pk for e in emails if e.pk > first and not e.to_address.endswith("@outlook.com")]
    assert len(held) == 2 and len(after) == 60
    assert max(written[pk] for pk in held) < min(written[pk] for pk in after)
    assert TextOfEmail.objects.filter(pk__in=held, status=Status.QUEUED, attempts=0).count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_default_group_never_backs_off(smtp_server, mixed):
    smtp_server.script("@example.net", "421 4.7.0 try again later")
    sending.send_due()
    assert not PacingBucket.objects.filter(slowed_per_minute__isnull=False).exists()
