import time
from datetime import timedelta

import pytest
from django.db.models import Q
from django.utils import timezone

from dbmail.conf import settings as conf
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


def test_a_claim_stops_at_its_byte_budget_but_always_takes_one_row():
    big = [TextOfEmailFactory(text="x" * 300_000, html="<p>" + "y" * 99_993 + "</p>") for _ in range(3)]
    raw = TextOfEmailFactory(text="", raw_message=b"z" * 500_000)
    first = claims.claim(10, max_bytes=900_000)
    assert [e.pk for e in first.emails] == [big[0].pk, big[1].pk] and first.bytes == 800_000
    alone = claims.claim(10, max_bytes=1_000)
    assert [e.pk for e in alone.emails] == [big[2].pk] and alone.bytes == 400_000  # bigger than the budget, alone
    assert claims.claim(10, max_bytes=499_999).bytes == 500_000  # the raw message counts too
    TextOfEmail.objects.filter(pk=raw.pk).update(status=Status.QUEUED, claim_token=None)
    assert claims.claim(10).bytes == 500_000  # no budget: all that is due


def test_a_claim_takes_only_what_was_due_when_the_run_began():
    started = timezone.now()
    before = TextOfEmailFactory(next_attempt_at=started - timedelta(seconds=1))
    later = TextOfEmailFactory(next_attempt_at=started + timedelta(milliseconds=1))
    # Taken over from a sender that died, but claimed by it after this run began: not this run's.
    TextOfEmailFactory(status=Status.SENDING, leased_until=started, status_changed_at=started + timedelta(seconds=1))
    time.sleep(0.01)
    assert [e.pk for e in claims.claim(10, due_by=started).emails] == [before.pk]
    assert claims.claim(10, due_by=started).emails == []
    assert {e.pk for e in claims.claim(10).emails} >= {later.pk}
    scoped = TextOfEmailFactory(next_attempt_at=started + timedelta(hours=1), status_changed_at=started)
    TextOfEmailFactory(next_attempt_at=started + timedelta(hours=1), status_changed_at=timezone.now())
    forced = claims.claim(10, scope=Q(next_attempt_at__gt=started), due_by=started)
    assert [e.pk for e in forced.emails] == [scoped.pk]


# --- Mail of an inactive sender account is held (issue 11, point 10) -------------------------


def test_mail_of_an_inactive_account_is_held_not_claimed():
    from dbmail.models import SenderAccount

    quiet = SenderAccount.objects.create(address="quiet@example.org", active=False)
    held_queued = TextOfEmailFactory(account=quiet)
    held_deferred = TextOfEmailFactory(account=quiet, status=Status.DEFERRED, attempts=3)
    site = TextOfEmailFactory(account=None)  # the site's own address: no account, never held
    other = TextOfEmailFactory()
    claim = claims.claim(10)
    assert {e.pk for e in claim.emails} == {site.pk, other.pk}
    claim.release()
    assert claims.claim_one(held_queued) is None  # the ad-hoc path holds it too
    assert claims.claim(10, scope=Q(pk=held_queued.pk)).emails == []  # even an operator's forced send
    for email in (held_queued, held_deferred):
        before = (email.status, email.attempts)
        email.refresh_from_db()
        assert (email.status, email.attempts) == before and email.shown_status() == "held"
    assert TextOfEmail.counts(TextOfEmail.objects.all()) == {"held": 2, "queued": 2}

    SenderAccount.objects.filter(pk=quiet.pk).update(active=True)
    assert {e.pk for e in claims.claim(10).emails} == {held_queued.pk, held_deferred.pk, site.pk, other.pk}


def test_a_dead_senders_rows_of_an_inactive_account_go_back_to_deferred():
    from dbmail.models import SenderAccount

    quiet = SenderAccount.objects.create(address="quiet@example.org", active=False)
    stale = TextOfEmailFactory(account=quiet, status=Status.SENDING, leased_until=timezone.now() - timedelta(1))
    live = TextOfEmailFactory(account=quiet, status=Status.SENDING, leased_until=timezone.now() + timedelta(1))
    assert claims.claim(10).emails == []
    stale.refresh_from_db()
    live.refresh_from_db()
    assert (stale.status, stale.claim_token, stale.shown_status()) == (Status.DEFERRED, None, "held")
    assert live.status == Status.SENDING  # a live sender finishes what it holds


def test_the_plain_sql_claim_picks_what_the_orm_query_picks():
    """claims._candidates_postgresql (a run's own claims) against claims._candidates (the ORM's), same rows."""
    from django.db import transaction

    from dbmail.models import MessageRequest, SenderAccount

    from .factories import MessageRequestFactory

    now = timezone.now()
    ago = [now - timedelta(minutes=m) for m in range(10)]
    off = SenderAccount.objects.create(address="off@example.org", active=False)
    rows = [TextOfEmailFactory(next_attempt_at=ago[i % 5], text="x" * (i * 10)) for i in range(8)]
    TextOfEmailFactory(account=off, next_attempt_at=ago[2])  # held: never a candidate
    TextOfEmailFactory(account=None, next_attempt_at=ago[3])  # the site's own mail: no account
    TextOfEmailFactory(status=Status.DEFERRED, next_attempt_at=ago[1])
    TextOfEmailFactory(next_attempt_at=now + timedelta(hours=1))  # not due
    TextOfEmailFactory(status=Status.SENDING, leased_until=ago[4], status_changed_at=ago[6])  # a dead sender's
    TextOfEmailFactory(status=Status.SENDING, leased_until=now + timedelta(minutes=5))  # a live one's
    TextOfEmailFactory(status=Status.SENT)
    paused = MessageRequestFactory(status=MessageRequest.Status.PAUSED)
    TextOfEmailFactory(request=paused, next_attempt_at=ago[2])  # a paused request's: never a candidate
    due_by = now
    for after in (None, (ago[3], rows[3].pk), (ago[0], 10**9)):
        for limit in (1, 3, 50):
            with transaction.atomic():
                orm = claims._candidates(
                    TextOfEmail.objects.select_for_update(skip_locked=True),
                    ~claims._held() & ~claims._paused(),
                    ("pk", "status", claims._body_bytes(), "account_id", "dest_group", "to_address"),
                    limit,
                    now,
                    due_by,
                    after,
                    None,
                )
                plain = claims._candidates_postgresql(limit, now, due_by, after, paced=True)
            assert [tuple(c) for c in plain] == [tuple(c) for c in orm], (after, limit)
            assert plain or after == (ago[0], 10**9)


def test_claimed_rows_are_the_instances_the_orm_would_load(django_assert_num_queries):
    """The claim fills each instance's __dict__ itself (claims._instances): it must be what from_db makes."""
    from django.db.models.signals import post_init

    plain = TextOfEmailFactory(headers={}, raw_message=None)
    extra = TextOfEmailFactory(account=None, headers={"X-Campaign": "spring", "List-Id": "<news.example.org>"})
    raw = TextOfEmailFactory(raw_message=b"Subject: forwarded\r\n\r\nbody\r\n")
    batch = claims.claim(10)
    assert {e.pk for e in batch.emails} == {plain.pk, extra.pk, raw.pk}
    fields = [f.attname for f in TextOfEmail._meta.concrete_fields]
    # What only an outcome writes, and the user, are not read back: deferred, as .defer() leaves them.
    unread = {"user_id", "sent_at", "last_error", "possibly_delivered"}
    for email in batch.emails:
        assert email.get_deferred_fields() == unread
        loaded = TextOfEmail.objects.get(pk=email.pk)
        for name in fields:
            ours, theirs = getattr(email, name), getattr(loaded, name)
            assert (bytes(ours) if isinstance(ours, memoryview) else ours) == (
                bytes(theirs) if isinstance(theirs, memoryview) else theirs
            ), name
        assert email._state.adding is False and email._state.db == "default"
        assert email == loaded and not email.get_deferred_fields()
    by_pk = {e.pk: e for e in batch.emails}
    fresh = claims.claim(10, now=timezone.now() + timedelta(seconds=conf.DBMAIL_LEASE_SECONDS + 1))
    assert {e.pk for e in fresh.emails} == set(by_pk)  # taken over once the lease ran out
    with django_assert_num_queries(0):  # what sending reads came with the claim
        for email in fresh.emails:
            for name in set(fields) - unread:
                getattr(email, name)
            assert email.status == Status.SENDING and email.claim_token == fresh.token
            assert email.leased_until == fresh.lease_until
    with django_assert_num_queries(1):  # a field left unread is loaded on first use, as a deferred one is
        assert fresh.emails[0].last_error == ""
    by_pk = {e.pk: e for e in batch.emails}
    with django_assert_num_queries(0):  # the account came with the claim, as select_related would
        assert by_pk[plain.pk].account.address == "office@example.org"
        assert by_pk[extra.pk].account is None
    assert by_pk[extra.pk].headers == {"X-Campaign": "spring", "List-Id": "<news.example.org>"}
    by_pk[plain.pk].headers["X-New"] = "1"  # each email its own dict
    assert by_pk[raw.pk].headers == {}
    by_pk[plain.pk].save(update_fields=["headers"])  # an instance the ORM can write back
    assert TextOfEmail.objects.get(pk=plain.pk).headers == {"X-New": "1"}

    # With something listening to the model's init signals, the ORM's own from_db makes them (and signals).
    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance.pk)

    post_init.connect(listener, sender=TextOfEmail)
    try:
        past = timezone.now() - timedelta(seconds=1)
        TextOfEmail.objects.filter(pk__in=[plain.pk]).update(leased_until=past, status_changed_at=past)
        seen.clear()
        again = claims.claim(10)
    finally:
        post_init.disconnect(listener, sender=TextOfEmail)
    assert [e.pk for e in again.emails] == [plain.pk] and plain.pk in seen
    assert again.emails[0].get_deferred_fields() == unread and again.emails[0].status == Status.SENDING
    assert again.emails[0].headers == {"X-New": "1"} and again.emails[0].claim_token == again.token


def test_a_claims_accounts_are_what_the_orm_loads_and_read_afresh_for_each_batch():
    """claims._accounts reads the batch's accounts in one plain statement: every field as in_bulk
    gives it (dates, floats, caps), and an operator's change between two batches is seen by the next."""
    from datetime import date

    from dbmail.models import SenderAccount

    from .factories import SenderAccountFactory

    account = SenderAccountFactory(
        daily_cap=500, warmup_start=date(2026, 1, 2), warmup_initial=50, warmup_factor=1.5, smtp_port=2525
    )
    other = SenderAccountFactory()
    first = TextOfEmailFactory(account=account)
    TextOfEmailFactory(account=other)
    batch = claims.claim(10)
    loaded = SenderAccount.objects.in_bulk([account.pk, other.pk])
    claimed = {e.account.pk: e.account for e in batch.emails}
    assert set(claimed) == {account.pk, other.pk}
    for pk, theirs in loaded.items():
        ours = claimed[pk]
        for field in SenderAccount._meta.concrete_fields:
            assert getattr(ours, field.attname) == getattr(theirs, field.attname), field.name
            assert type(getattr(ours, field.attname)) is type(getattr(theirs, field.attname)), field.name
        assert ours._state.adding is False and ours._state.db == "default"
    claimed[account.pk].save(update_fields=["display_name"])  # an instance the ORM can write back
    batch.release()

    SenderAccount.objects.filter(pk=account.pk).update(daily_cap=7, smtp_host="relay.example.net")
    again = claims.claim(10)
    fresh = next(e.account for e in again.emails if e.pk == first.pk)
    assert (fresh.daily_cap, fresh.smtp_host) == (7, "relay.example.net")


@pytest.mark.parametrize("paced", [False, True])
def test_the_prepared_claim_statements_keep_to_their_partial_indexes_under_a_generic_plan(paced):
    """The candidate statements are prepared once a session; after five runs PostgreSQL may keep a generic
    plan, made without the parameters' values: the states are written in, so it still reads the partial
    index (a status parameter would not match the index's predicate, and the claim would scan the table)."""
    from django.db import connection

    TextOfEmailFactory()
    probes = {"stale": ("dbmail_lease", "now(), now(), 100"), "due": ("dbmail_due", "now(), 100")}
    probes["due_after"] = ("dbmail_due", "now(), now() - interval '1 day', 5, 100")
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        # Whatever statistics earlier tests left (a table of one row may be cheaper to scan): the question
        # is whether the index can serve the statement at all, and with a status parameter it could not.
        cursor.execute("SET enable_seqscan = off")
        try:
            for which, (index, params) in probes.items():
                cursor.execute(f"PREPARE plan_probe AS {claims._candidate_sql(which, paced)}")
                cursor.execute(f"EXPLAIN EXECUTE plan_probe ({params})")
                plan = "\n".join(row[0] for row in cursor.fetchall())
                cursor.execute("DEALLOCATE plan_probe")
                assert f"Index Scan using {index} on dbmail_textofemail" in plan, plan
        finally:
            cursor.execute("RESET plan_cache_mode; RESET enable_seqscan")
