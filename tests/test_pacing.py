"""dbmail.send.pacing: budgets per destination group, for all mail and per connection, shared through the database.

Budgets are asserted on what was claimed and on the bucket rows, with a
clock the test moves; the concurrent test runs real dbmail_cron processes
against the scripted SMTP server and allows generous margins (the rate
figure itself is bench/pacing.py's).
"""

import json
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db.models import Q
from django.utils import timezone

from dbmail import states
from dbmail.content import rendering
from dbmail.intake import outbox
from dbmail.models import ConnectionSlot, PacingBucket, TextOfEmail
from dbmail.send import claims, destinations, pacing
from dbmail.send import loop as sending

from .conftest import start_manage, subprocess_env
from .factories import SenderAccountFactory

Status = states.EmailStatus
GROUPS = {"gmail": {"rate_per_minute": 60, "max_connections": 0}}


class Clock:
    """A clock the test moves (the pacer's `clock`)."""

    def __init__(self):
        self.now = timezone.now()

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


def queue(domain, n, account=None, classified=True, start=0):
    account = account or SenderAccountFactory()
    emails = [
        TextOfEmail(
            account=account,
            to_address=f"r{start + i:05d}@{domain}",
            dest_group=destinations.group_of(f"x@{domain}") if classified else None,
            from_header=account.from_header,
            envelope_sender=account.address,
            subject=f"n{i}",
            text="hello\n",
            message_id=rendering.new_message_id(),
        )
        for i in range(n)
    ]
    TextOfEmail.objects.bulk_create(emails)
    return emails


def domains(batch):
    return Counter(e.to_address.rpartition("@")[2] for e in batch.emails)


@pytest.fixture
def gmail_paced(settings):
    settings.DBMAIL_DESTINATION_GROUPS = GROUPS
    settings.DBMAIL_THROTTLE_PER_SECOND = 0


@pytest.mark.django_db
def test_a_group_gets_no_more_than_its_budget_and_the_rest_waits_untouched(gmail_paced):
    queue("gmail.com", 100)
    queue("example.net", 20)
    pacer = pacing.Pacer(clock=Clock())
    batch = claims.claim(500, pacer=pacer)
    # A new bucket holds a minute's worth; mail to other groups is not held up by it.
    assert domains(batch) == {"gmail.com": 60, "example.net": 20}
    waiting = TextOfEmail.objects.filter(to_address__endswith="@gmail.com", status=Status.QUEUED)
    assert waiting.count() == 40 and set(waiting.values_list("attempts", flat=True)) == {0}
    assert PacingBucket.objects.get(name="gmail").tokens < 1
    # The group waits (the next claim passes over its rows without taking them).
    assert not claims.claim(500, pacer=pacer).emails
    assert pacer.next_chance() is not None


@pytest.mark.django_db
def test_the_budget_fills_at_the_rate(gmail_paced):
    queue("gmail.com", 100)
    clock = Clock()
    pacer = pacing.Pacer(clock=clock)
    assert len(claims.claim(500, pacer=pacer).emails) == 60
    clock.advance(30)  # 60 a minute: 30 more
    assert len(claims.claim(500, pacer=pacer).emails) == 30
    clock.advance(600)  # never more than a minute's worth at once
    assert len(claims.claim(500, pacer=pacer).emails) == 10  # all that is left
    assert PacingBucket.objects.get(name="gmail").tokens == pytest.approx(50)


@pytest.mark.django_db
def test_two_senders_share_one_budget(gmail_paced):
    queue("gmail.com", 200)
    clock = Clock()
    first, second = pacing.Pacer(clock=clock), pacing.Pacer(clock=clock)
    taken = [len(claims.claim(50, pacer=p).emails) for p in (first, second, first, second)]
    assert taken == [50, 10, 0, 0]
    clock.advance(10)
    assert len(claims.claim(50, pacer=second).emails) == 10


@pytest.mark.django_db
def test_the_throttle_for_all_mail_is_shared_too(settings):
    settings.DBMAIL_THROTTLE_PER_SECOND = 5
    queue("example.net", 50)
    clock = Clock()
    first, second = pacing.Pacer(clock=clock), pacing.Pacer(clock=clock)
    assert len(claims.claim(50, pacer=first).emails) == 5  # a second's worth
    assert len(claims.claim(50, pacer=second).emails) == 0
    assert claims.claim(50, pacer=first).emails == []  # it waits without asking the database
    clock.advance(2)
    assert len(claims.claim(50, pacer=second).emails) == 5  # never more than a second's worth


@pytest.mark.django_db
def test_connection_slots_limit_the_senders_of_a_group(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 0, "max_connections": 1}}
    queue("gmail.com", 10)
    queue("example.net", 10)
    clock = Clock()
    first, second = pacing.Pacer(clock=clock), pacing.Pacer(clock=clock)
    assert domains(claims.claim(5, pacer=first)) == {"gmail.com": 5}
    assert domains(claims.claim(20, pacer=second)) == {"example.net": 10}  # no slot for gmail: other mail goes
    assert ConnectionSlot.objects.get(group="gmail").holder == first.holder
    first.finish()  # the end of its run frees the slot
    clock.advance(pacing.SLOT_RETRY.total_seconds() + 1)
    assert domains(claims.claim(20, pacer=second)) == {"gmail.com": 5}
    assert ConnectionSlot.objects.get(group="gmail").holder == second.holder


@pytest.mark.django_db
def test_a_slot_whose_holder_died_is_taken_over_after_its_lease(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 0, "max_connections": 1}}
    settings.DBMAIL_LEASE_SECONDS = 60
    queue("gmail.com", 10)
    clock = Clock()
    dead, alive = pacing.Pacer(clock=clock), pacing.Pacer(clock=clock)
    claims.claim(2, pacer=dead)  # and never finishes
    assert not claims.claim(2, pacer=alive).emails
    clock.advance(61)
    assert len(claims.claim(2, pacer=alive).emails) == 2


@pytest.mark.django_db
def test_rows_made_without_a_group_are_classified_when_claimed(gmail_paced):
    queue("gmail.com", 80, classified=False)
    pacer = pacing.Pacer(clock=Clock())
    assert len(claims.claim(100, pacer=pacer).emails) == 60
    # Those left waiting carry their group now, so that the next claims pass over them.
    assert set(TextOfEmail.objects.filter(status=Status.QUEUED).values_list("dest_group", flat=True)) == {"gmail"}


@pytest.mark.django_db
def test_a_group_no_longer_configured_is_the_default_group(gmail_paced):
    queue("example.net", 3)
    TextOfEmail.objects.update(dest_group="gone")
    assert len(claims.claim(10, pacer=pacing.Pacer(clock=Clock())).emails) == 3


@pytest.mark.django_db(transaction=True)
def test_a_run_without_a_deadline_leaves_mail_whose_budget_is_far_off(gmail_paced, smtp_server, settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 6, "max_connections": 0}}
    PacingBucket.objects.create(name="gmail", tokens=0, configured_per_minute=6)
    queue("gmail.com", 3)
    queue("example.net", 3)
    started = time.monotonic()
    result = sending.send_due()
    assert time.monotonic() - started < pacing.MAX_IDLE_WAIT  # one every 10 s: not worth waiting for
    assert (result.sent, result.deferred) == (3, 0)
    left = TextOfEmail.objects.filter(to_address__endswith="@gmail.com")
    assert set(left.values_list("status", "attempts")) == {(Status.QUEUED, 0)}


@pytest.mark.django_db(transaction=True)
def test_a_run_waits_for_budget_that_comes_soon(gmail_paced, smtp_server, settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 240, "max_connections": 0}}
    PacingBucket.objects.create(name="gmail", tokens=0, configured_per_minute=240)
    queue("gmail.com", 4)
    result = sending.send_due(max_seconds=30)
    assert result.sent == 4  # 4 a second: waited for, within the deadline
    assert len(smtp_server.received) == 4


@pytest.mark.django_db(transaction=True)
def test_the_ad_hoc_path_takes_from_the_budget_or_leaves_the_email_to_cron(gmail_paced, smtp_server):
    account = SenderAccountFactory()
    PacingBucket.objects.create(name="gmail", tokens=1, configured_per_minute=60)
    first = outbox.send_now("ann@gmail.com", "hi", "text", from_email=account.address)
    second = outbox.send_now("bob@gmail.com", "hi", "text", from_email=account.address)
    other = outbox.send_now("cy@example.net", "hi", "text", from_email=account.address)
    for email in (first, second, other):
        email.refresh_from_db()
    assert (first.status, second.status, other.status) == (Status.SENT, Status.QUEUED, Status.SENT)
    assert second.attempts == 0


# --- several dbmail_cron processes at once ---------------------------------------------------------


def cron(env, *args):
    return start_manage("dbmail_cron", *args, env=env)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_three_senders_share_each_groups_budget_and_a_pushback_slows_only_its_group(smtp_server):
    groups = {
        "gmail": {"rate_per_minute": 60, "max_connections": 0},
        "microsoft": {"rate_per_minute": 600, "max_connections": 0},
    }
    # gmail's budget starts empty: what goes out is what 60 a minute earns while the senders run.
    PacingBucket.objects.create(name="gmail", tokens=0, configured_per_minute=60)
    smtp_server.script("@outlook.com", "421 4.7.0 try again later")
    queue("gmail.com", 100)
    queue("outlook.com", 100)
    queue("example.net", 300)
    env = subprocess_env(smtp_server, DBMAIL_DESTINATION_GROUPS=json.dumps(groups), DBMAIL_BATCH_SIZE=20)
    started = time.time()
    procs = [cron(env, "--max-seconds", "6") for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    elapsed = time.time() - started
    received = Counter(m.rcpt_tos[0].rpartition("@")[2] for m in smtp_server.received)

    # Other mail went at full speed, untouched by gmail's budget or outlook's pushback.
    assert received["example.net"] == 300
    # One budget for the three: one a second while they ran (three times that if each counted its own).
    assert 1 <= received["gmail.com"] <= elapsed + 2
    assert TextOfEmail.objects.filter(to_address__endswith="@gmail.com", status=Status.QUEUED, attempts=0).count() == (
        100 - received["gmail.com"]
    )
    # Outlook pushed back: slowed once for every sender (halved, not halved by each), its mail waits untried.
    microsoft = PacingBucket.objects.get(name="microsoft")
    assert 300 <= microsoft.slowed_per_minute < 400  # 600 halved once, recovering since (150: halved twice)
    print(f"received {dict(received)} in {elapsed:.1f}s; microsoft {microsoft.slowed_per_minute:.0f} a minute")
    assert microsoft.slowed_since is not None and "4.7.0" in microsoft.pushback_text
    assert received["outlook.com"] == 0
    tried = TextOfEmail.objects.filter(to_address__endswith="@outlook.com").exclude(status=Status.QUEUED)
    assert tried.count() <= 3 * 2  # at most the first of a batch per sender, and one more after the hold
    assert set(TextOfEmail.objects.filter(to_address__endswith="@outlook.com").values_list("attempts", flat=True)) == {
        0
    }  # a 421 is not an attempt
    assert not PacingBucket.objects.filter(name="gmail", slowed_per_minute__isnull=False).exists()


# --- connection slots given back as soon as a run is done with a group --------------------------------


def tried(pacer, emails, domain):
    """The emails to `domain`, each tried as the sender would: whether each one left its group with none in hand."""
    return [pacer.counted(e, sending.retry.Outcome("sent", 250, "ok")) for e in emails if e.to_address.endswith(domain)]


@pytest.mark.django_db
def test_a_run_gives_its_slot_back_once_it_has_no_more_of_that_groups_mail_in_hand(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 0, "max_connections": 1}}
    queue("gmail.com", 4)
    queue("example.net", 6)
    clock = Clock()
    first, second = pacing.Pacer(clock=clock), pacing.Pacer(clock=clock)
    batch = claims.claim(10, pacer=first)
    assert domains(batch) == {"gmail.com": 4, "example.net": 6}
    queue("gmail.com", 3, start=100)  # more gmail mail, for the second run
    # Three of four tried: the first run still has gmail mail in hand, so it keeps the slot.
    gmail = [e for e in batch.emails if e.to_address.endswith("@gmail.com")]
    assert tried(first, gmail[:3], "gmail.com") == [False] * 3
    assert first.release_idle() == []
    assert not claims.claim(10, pacer=second).emails
    # The fourth: nothing of gmail in hand any more, while its example.net mail is still to send.
    assert tried(first, gmail[3:], "gmail.com") == [True]
    assert first.release_idle() == ["gmail"]
    assert ConnectionSlot.objects.get(group="gmail").holder is None
    clock.advance(pacing.SLOT_RETRY.total_seconds() + 1)
    assert domains(claims.claim(10, pacer=second)) == {"gmail.com": 3}
    assert ConnectionSlot.objects.get(group="gmail").holder == second.holder
    # The first run, asked again for gmail mail (none left), takes nothing, and the slot stays the second's.
    assert not claims.claim(10, pacer=first).emails
    assert ConnectionSlot.objects.get(group="gmail").holder == second.holder
    second.finish()
    first.finish()
    assert ConnectionSlot.objects.get(group="gmail").holder is None


@pytest.mark.django_db
def test_mail_given_back_untried_frees_the_slot_too_and_a_dead_runs_slot_still_waits_for_its_lease(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 0, "max_connections": 1}}
    settings.DBMAIL_LEASE_SECONDS = 60
    queue("gmail.com", 4)
    clock = Clock()
    first, dead, third = pacing.Pacer(clock=clock), pacing.Pacer(clock=clock), pacing.Pacer(clock=clock)
    batch = claims.claim(10, pacer=first)
    first.give_back(batch.open_ids)  # a clean stop, say: the batch goes back untried
    batch.release()
    assert first.release_idle() == ["gmail"]
    clock.advance(pacing.SLOT_RETRY.total_seconds() + 1)
    assert len(claims.claim(2, pacer=dead).emails) == 2  # and then it is killed (kill -9): nothing given back
    clock.advance(30)
    assert not claims.claim(10, pacer=third).emails  # its lease still runs
    clock.advance(31)
    assert len(claims.claim(10, pacer=third).emails) == 2


@pytest.mark.django_db(transaction=True)
def test_a_second_run_gets_the_slot_once_the_first_is_done_with_the_group_while_the_first_still_sends(
    settings, smtp_server
):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 0, "max_connections": 1}}
    settings.DBMAIL_THROTTLE_PER_SECOND = 0
    account = SenderAccountFactory()
    queue("gmail.com", 3, account=account)
    queue("example.net", 12, account=account)  # behind the gmail mail in the queue
    seen, second_runs = [], []

    def second_run():
        # Mail that was not due when the first run started: only a second run may take it (and only it:
        # the first run's example.net mail stays the first run's).
        queue("gmail.com", 2, account=account, start=100)
        gmail = Q(to_address__endswith="@gmail.com")
        result = sending.Sender(batch_size=5, max_messages=2, max_seconds=20, scope=gmail).run()
        second_runs.append((result.sent, len(seen)))

    def on_outcome(email, outcome):
        seen.append(email.to_address)
        if email.to_address.endswith("@gmail.com") and len(seen) == 1:
            # The first run holds the slot and has gmail mail in hand: a run asking now gets none of it.
            other = pacing.Pacer()
            assert not claims.claim(10, scope=Q(to_address__endswith="@gmail.com"), pacer=other).emails
            other.finish()
        if seen == [e for e in seen if e.endswith("@gmail.com")] and len(seen) == 3:
            # Its last gmail email: the slot is given back on the database thread; the second run gets it.
            deadline = time.monotonic() + 10
            while ConnectionSlot.objects.filter(group="gmail", holder__isnull=False).exists():
                assert time.monotonic() < deadline, "the first run kept the slot"
                time.sleep(0.02)
            second_run()

    first = sending.Sender(batch_size=3, on_outcome=on_outcome).run()
    assert first.sent == 15
    # The second run sent its two gmail emails in the middle of the first run: 3 of its 15 tried then.
    assert second_runs == [(2, 3)]
    assert [m.rcpt_tos[0] for m in smtp_server.received][3:5] == ["r00100@gmail.com", "r00101@gmail.com"]
    assert ConnectionSlot.objects.get(group="gmail").holder is None


# --- a waiting group's backlog: the claim names the other groups' values ------------------------------


@pytest.mark.django_db
def test_while_a_group_waits_the_claim_takes_every_other_kind_of_row_and_none_of_the_waiting_ones(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 60, "max_connections": 0}}
    settings.DBMAIL_THROTTLE_PER_SECOND = 0
    PacingBucket.objects.create(name="gmail", tokens=0, configured_per_minute=60)  # gmail waits
    backlog = queue("gmail.com", 30)  # ahead of the rest in the queue
    plain = queue("example.net", 3, start=100)
    stale = queue("example.org", 2, start=200)
    TextOfEmail.objects.filter(pk__in=[e.pk for e in stale]).update(dest_group="gone")  # a group removed since
    unclassified = queue("example.com", 2, classified=False, start=300)
    dead = queue("example.net", 1, start=400)[0]  # a dead sender's, its lease run out
    TextOfEmail.objects.filter(pk=dead.pk).update(
        status=Status.SENDING, leased_until=timezone.now() - timedelta(minutes=1), claim_token=None
    )
    clock = Clock()
    pacer = pacing.Pacer(clock=clock)
    first = claims.claim(10, pacer=pacer)  # gmail's rows come first: none admitted, and gmail now waits
    assert not [e for e in first.emails if e.to_address.endswith("@gmail.com")]
    taken = {e.pk for e in first.emails}
    for _ in range(3):
        taken |= {e.pk for e in claims.claim(10, pacer=pacer).emails}
    assert taken == {e.pk for e in (*plain, *stale, *unclassified, dead)}
    assert not TextOfEmail.objects.filter(pk__in=[e.pk for e in backlog]).exclude(status=Status.QUEUED).exists()
    assert set(TextOfEmail.objects.filter(pk__in=[e.pk for e in backlog]).values_list("attempts", flat=True)) == {0}


@pytest.mark.django_db
def test_mail_of_a_group_that_appears_while_another_waits_is_claimed_after_the_next_reading(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": {"rate_per_minute": 60, "max_connections": 0}}
    settings.DBMAIL_THROTTLE_PER_SECOND = 0
    PacingBucket.objects.create(name="gmail", tokens=0, configured_per_minute=60)
    queue("gmail.com", 5)
    clock = Clock()
    pacer = pacing.Pacer(clock=clock)
    assert not claims.claim(10, pacer=pacer).emails
    assert not claims.claim(10, pacer=pacer).emails  # gmail waits: the claim names what else is due (nothing)
    later = queue("outlook.com", 2, start=100)
    clock.advance(pacing.REFRESH.total_seconds())  # the groups of due mail are read again (gmail still waits)
    PacingBucket.objects.filter(name="gmail").update(tokens=0, refilled_at=clock.now)
    assert {e.pk for e in claims.claim(10, pacer=pacer).emails} == {e.pk for e in later}
