"""The dashboard's roll-up: outcomes counted where they are written, merged by cron, read per day."""

import importlib
from datetime import date, timedelta

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from dbmail import rollup
from dbmail.models import DailyStat, DailyStatDelta, Suppression, TextOfEmail
from dbmail.send import claims, outcomes, retry
from dbmail.send import loop as sending
from dbmail.track.apply import apply_batch

from .factories import MessageRequestFactory, SenderAccountFactory, TextOfEmailFactory
from .tracking_support import event

Status = TextOfEmail.Status


def totals(**filters):
    rows = [*DailyStat.objects.filter(**filters), *DailyStatDelta.objects.filter(**filters)]
    return {name: sum(getattr(r, name) for r in rows) for name in rollup.COUNTS}


def only(**counts):
    return {name: counts.get(name, 0) for name in rollup.COUNTS}


@pytest.mark.django_db(transaction=True)
def test_sending_counts_sent_deferred_and_dropped_per_request_and_account(smtp_server):
    mail = MessageRequestFactory(status="expanded")
    other = SenderAccountFactory(address="news@example.org")
    smtp_server.script("later@example.net", "451 4.3.0 try later")
    smtp_server.script("gone@example.net", "550 5.1.1 no such user")
    TextOfEmailFactory.create_batch(3, request=mail, account=mail.sender)
    TextOfEmailFactory(request=mail, account=mail.sender, to_address="later@example.net")
    TextOfEmailFactory(request=mail, account=mail.sender, to_address="gone@example.net")
    TextOfEmailFactory(account=other)  # an outbox email: no request
    result = sending.send_due()
    assert (result.sent, result.deferred, result.dropped) == (4, 1, 1)
    today = timezone.localdate()
    assert totals(request_id=mail.pk) == only(sent=3, deferred=1, dropped=1)
    assert totals(account_id=other.pk, request_id=None) == only(sent=1)
    assert set(DailyStatDelta.objects.values_list("day", flat=True)) == {today}
    assert not DailyStat.objects.exists()  # until dbmail_cron merges them


@pytest.mark.django_db
@pytest.mark.parametrize("writer", [outcomes._write_postgresql, outcomes._write_portable])
def test_both_outcome_writers_count_and_a_lost_claim_counts_nothing(monkeypatch, writer):
    monkeypatch.setattr(outcomes, "_write_postgresql", writer)
    mail = MessageRequestFactory(status="expanded")
    kept, lost = TextOfEmailFactory.create_batch(2, request=mail, account=mail.sender)
    batch = claims.claim(2)
    by_pk = {e.pk: e for e in batch.emails}
    TextOfEmail.objects.filter(pk=lost.pk).update(claim_token=None)  # taken over meanwhile
    outcomes.record(by_pk[kept.pk], batch.token, retry.Outcome("sent", 250, "ok"))
    outcomes.record(by_pk[lost.pk], batch.token, retry.Outcome("sent", 250, "ok"))
    assert totals(request_id=mail.pk, account_id=mail.sender_id) == only(sent=1)


@pytest.mark.django_db
def test_tracking_counts_status_changes_once_by_the_day_they_were_applied():
    mail = MessageRequestFactory(status="expanded")
    a, b, c = (TextOfEmailFactory(request=mail, account=mail.sender, status=Status.SENT) for _ in range(3))
    old = (timezone.now() - timedelta(days=40)).isoformat()  # the MTA's clock says long ago
    events = [
        event(a.message_id, "delivered", timestamp=old),
        event(b.message_id, "bounced", bounce_type="hard"),
        event(c.message_id, "delivered"),
    ]
    apply_batch(events)
    apply_batch(events)  # redelivered: nothing new
    apply_batch([event(c.message_id, "complained"), event(a.message_id, "opened")])  # opened changes nothing
    assert totals(request_id=mail.pk) == only(delivered=2, bounced=1, hard_bounced=1, complained=1)
    assert set(DailyStatDelta.objects.values_list("day", flat=True)) == {timezone.localdate()}


@pytest.mark.django_db
@pytest.mark.parametrize("merge", [rollup.merge, rollup._merge_portable])
def test_merge_folds_the_deltas_into_one_row_per_key_and_changes_no_sum(merge):
    mail = MessageRequestFactory(status="expanded")
    today, yesterday = date(2026, 12, 1), date(2026, 11, 30)
    rows = [
        (today, mail.sender_id, mail.pk, "sent"),
        (today, mail.sender_id, mail.pk, "sent"),
        (today, mail.sender_id, mail.pk, "bounced"),
        (today, mail.sender_id, mail.pk, "hard_bounced"),
        (yesterday, mail.sender_id, mail.pk, "sent"),
        (today, None, None, "delivered"),
        (today, mail.sender_id, mail.pk, "queued"),  # not a counted outcome
    ]
    for row in rows:
        rollup.count([row])
    before = rollup.figures(yesterday, today)
    assert merge(limit=3) == 3
    assert merge() == 3
    assert merge() == 0
    rollup.count([(today, mail.sender_id, mail.pk, "sent")])
    assert merge() == 1
    after = rollup.figures(yesterday, today)
    assert after.total == {**before.total, "sent": before.total["sent"] + 1}
    assert not DailyStatDelta.objects.exists()
    keyed = {(r.day, r.account_id, r.request_id): r for r in DailyStat.objects.all()}
    assert len(keyed) == DailyStat.objects.count() == 3
    row = keyed[(today, mail.sender_id, mail.pk)]
    assert (row.sent, row.bounced, row.hard_bounced) == (3, 1, 1)


@pytest.mark.django_db
def test_merge_all_empties_a_backlog_in_bounded_rounds():
    for _ in range(7):
        rollup.count([(date(2026, 12, 1), None, None, "sent")])
    assert rollup.merge_all(limit=2) == 7
    assert DailyStat.objects.get().sent == 7


@pytest.mark.django_db
def test_figures_fill_every_day_count_unsubscribes_and_rank_accounts():
    a = SenderAccountFactory(address="a@example.org")
    b = SenderAccountFactory(address="b@example.org")
    first, last = date(2026, 11, 28), date(2026, 12, 1)
    rollup.count([(first, a.pk, None, "sent")] * 2 + [(first, a.pk, None, "delivered")])
    rollup.count([(last, b.pk, None, "sent")] * 5 + [(last, b.pk, None, "bounced")] * 2)
    rollup.count([(last, b.pk, None, "hard_bounced")])
    rollup.count([(last + timedelta(days=1), b.pk, None, "sent")])  # outside the range
    noon = timezone.make_aware(timezone.datetime(2026, 11, 29, 12))
    Suppression.objects.create(address="x@example.org", reason="unsubscribed", created_at=noon)
    Suppression.objects.create(address="y@example.org", reason="bounced", created_at=noon)
    shown = rollup.figures(first, last)
    assert [d for d, _ in shown.days] == [first + timedelta(days=n) for n in range(4)]
    assert shown.days[0][1]["sent"] == 2 and shown.days[1][1]["unsubscribed"] == 1
    assert shown.days[2][1] == {name: 0 for name in rollup.SHOWN}
    expected = {"sent": 7, "delivered": 1, "bounced": 2, "hard_bounced": 1, "unsubscribed": 1}
    assert shown.total == {**{n: 0 for n in rollup.SHOWN}, **expected}
    assert [account for account, _ in shown.accounts] == [b.pk, a.pk]
    assert shown.rates == {"delivered": 14.3, "bounced": 28.6, "hard_bounced": 14.3, "complained": 0.0}


def test_rates_are_none_without_sent_mail():
    none = {"delivered": None, "bounced": None, "hard_bounced": None, "complained": None}
    assert rollup.rates({"sent": 0, "delivered": 0}) == none
    assert rollup.rates({"sent": 8, "delivered": 6, "bounced": 2, "hard_bounced": 1}) == {
        "delivered": 75.0,
        "bounced": 25.0,
        "hard_bounced": 12.5,
        "complained": 0.0,
    }


@pytest.mark.django_db
def test_per_request_sums_over_days():
    mail = MessageRequestFactory(status="expanded")
    rollup.count([(date(2026, 11, 30), mail.sender_id, mail.pk, "sent")])
    rollup.count(
        [(date(2026, 12, 1), mail.sender_id, mail.pk, "sent"), (date(2026, 12, 1), None, mail.pk, "delivered")]
    )
    assert rollup.per_request([mail.pk, mail.pk + 1]) == {mail.pk: only(sent=2, delivered=1)}


@pytest.mark.django_db
def test_the_migration_estimates_the_roll_up_of_earlier_mail():
    migration = importlib.import_module("dbmail.migrations.0009_dashboard")
    mail = MessageRequestFactory(status="expanded")
    sent_at = timezone.make_aware(timezone.datetime(2026, 11, 2, 10))
    later = sent_at + timedelta(days=1)
    for status in ("sent", "delivered", "bounced", "complained"):
        TextOfEmailFactory(request=mail, account=mail.sender, status=status, sent_at=sent_at, status_changed_at=later)
    TextOfEmailFactory(request=mail, account=mail.sender, status="dropped", attempts=1, status_changed_at=later)
    TextOfEmailFactory(request=mail, account=mail.sender, status="dropped", attempts=0)  # a bad address
    TextOfEmailFactory(request=mail, account=mail.sender, status="queued")
    migration.backfill(apps, connection.schema_editor())
    rows = {r.day: r for r in DailyStat.objects.all()}
    assert set(rows) == {sent_at.date(), later.date()} and rows[sent_at.date()].sent == 4
    assert [getattr(rows[later.date()], n) for n in ("delivered", "bounced", "complained", "dropped")] == [1, 1, 1, 1]
