"""dbmail.send.caps: daily caps and warm-up per sender account; mail over the cap waits for the next UTC day."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from dbmail import states
from dbmail.models import SenderAccount, SenderDailyCount, TextOfEmail
from dbmail.send import caps, claims, pacing
from dbmail.send import loop as sending

from .factories import SenderAccountFactory, TextOfEmailFactory

Status = states.EmailStatus


def account(**fields):
    return SenderAccount(address="news@example.org", **fields)


def test_a_warm_up_grows_the_cap_day_by_day_up_to_the_daily_cap():
    start = date(2026, 3, 1)
    news = account(daily_cap=200, warmup_start=start, warmup_initial=50, warmup_factor=1.5)
    caps_by_day = [news.cap_on(start + timedelta(days=n)) for n in range(-1, 6)]
    assert caps_by_day == [50, 50, 75, 112, 168, 200, 200]
    assert account(daily_cap=300).cap_on(start) == 300
    assert account().cap_on(start) is None


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"warmup_start": date(2026, 3, 1)}, "warmup_initial"),
        ({"warmup_start": date(2026, 3, 1), "warmup_initial": 10}, "daily_cap"),
        ({"daily_cap": 10, "warmup_factor": 0.5}, "warmup_factor"),
    ],
)
def test_a_warm_up_needs_its_parts(fields, field):
    with pytest.raises(ValidationError) as raised:
        account(**fields).clean()
    assert field in raised.value.message_dict


def test_days_are_utc_days():
    late = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    assert caps.day_of(late) == date(2026, 3, 1)
    assert caps.next_day(late) == datetime(2026, 3, 2, tzinfo=UTC)


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.mark.django_db(transaction=True)
def test_mail_over_the_cap_waits_for_the_next_day_without_an_attempt(smtp_server):
    capped = SenderAccountFactory(address="news@example.org", daily_cap=3)
    free = SenderAccountFactory(address="office@example.org")
    TextOfEmailFactory.create_batch(5, account=capped)
    TextOfEmailFactory.create_batch(2, account=free)
    today = Clock(datetime.now(UTC))

    assert sending.send_due(clock=today).sent == 5  # three of the capped account, both of the other
    waiting = TextOfEmail.objects.filter(account=capped, status=Status.QUEUED)
    assert waiting.count() == 2 and set(waiting.values_list("attempts", flat=True)) == {0}
    assert SenderDailyCount.objects.get(account=capped).taken == 3
    assert "resumes tomorrow 00:00 UTC" in caps.waiting_words(capped, today())

    assert sending.send_due(clock=today).sent == 0  # the same day: nothing more
    tomorrow = Clock(caps.next_day(today()) + timedelta(minutes=1))
    assert caps.waiting_words(capped, tomorrow()) == ""
    assert sending.send_due(clock=tomorrow).sent == 2
    assert not TextOfEmail.objects.exclude(status=Status.SENT).exists()
    assert len(smtp_server.received) == 7


@pytest.mark.django_db
def test_two_senders_share_the_count():
    capped = SenderAccountFactory(address="news@example.org", daily_cap=4)
    TextOfEmailFactory.create_batch(6, account=capped)
    first, second = pacing.Pacer(), pacing.Pacer()
    assert len(claims.claim(3, pacer=first).emails) == 3
    assert len(claims.claim(3, pacer=second).emails) == 1
    assert claims.claim(3, pacer=second).emails == []  # it knows the account waits until tomorrow


@pytest.mark.django_db(transaction=True)
def test_places_come_back_for_mail_never_tried_or_not_counted(settings):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens: the server's fault, not an attempt
    settings.EMAIL_TIMEOUT, settings.DBMAIL_RECONNECT_TRIES = 1, 0
    capped = SenderAccountFactory(address="news@example.org", daily_cap=3)
    TextOfEmailFactory.create_batch(3, account=capped)
    result = sending.send_due()
    assert result.deferred == 3 and result.sent == 0
    assert SenderDailyCount.objects.get(account=capped).taken == 0


@pytest.mark.django_db(transaction=True)
def test_places_of_mail_claimed_and_given_back_untried_come_back(smtp_server):
    capped = SenderAccountFactory(address="news@example.org", daily_cap=10)
    TextOfEmailFactory.create_batch(5, account=capped)
    assert sending.send_due(max_messages=2).sent == 2
    assert SenderDailyCount.objects.get(account=capped).taken == 2


@pytest.mark.django_db(transaction=True)
def test_the_ad_hoc_path_counts_against_the_cap(smtp_server):
    from dbmail.intake import outbox

    SenderAccountFactory(address="news@example.org", daily_cap=1)
    first = outbox.send_now("ann@example.net", "hi", "text", from_email="news@example.org")
    second = outbox.send_now("bob@example.net", "hi", "text", from_email="news@example.org")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status, second.attempts) == (Status.SENT, Status.QUEUED, 0)


@pytest.mark.django_db
def test_the_accounts_at_their_cap_today():
    news = SenderAccountFactory(address="news@example.org", daily_cap=2)
    other = SenderAccountFactory(address="other@example.org", daily_cap=5)
    now = datetime.now(UTC)
    SenderDailyCount.objects.create(account=news, day=caps.day_of(now), taken=2)
    SenderDailyCount.objects.create(account=other, day=caps.day_of(now), taken=1)
    assert caps.reached(now) == [(news, 2, 2)]
    assert caps.usage(other, now) == (5, 1)
