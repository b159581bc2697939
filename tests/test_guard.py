"""dbmail.track.guard: a request that bounces or draws complaints too much is paused in the same run; resume, cancel."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dbmail import rollup, states
from dbmail.content import rendering
from dbmail.models import HARD_BOUNCED, AuditEvent, MessageRequest, Suppression, TextOfEmail
from dbmail.send import claims
from dbmail.track import guard
from dbmail.track.apply import apply_batch

from .factories import MessageRequestFactory, UserFactory
from .tracking_support import event

pytestmark = pytest.mark.django_db
E, R = states.EmailStatus, states.RequestStatus


def request_with(sent, waiting=0, status=R.EXPANDED):
    """A request with `sent` emails the server accepted (counted in the roll-up) and `waiting` still queued."""
    mail = MessageRequestFactory(status=status, expanded_at=timezone.now() if status == R.EXPANDED else None)
    rows = [
        TextOfEmail(
            request=mail,
            account=mail.sender,
            to_address=f"r{n:05d}@example.net",
            from_header="x@example.org",
            envelope_sender="x@example.org",
            message_id=rendering.new_message_id(),
            status=E.SENT if n < sent else E.QUEUED,
        )
        for n in range(sent + waiting)
    ]
    TextOfEmail.objects.bulk_create(rows)
    day = rollup.day_of(timezone.now())
    rollup.count((day, mail.sender_id, mail.pk, E.SENT) for _ in range(sent))
    return mail, list(mail.emails.order_by("pk"))


def events(emails, kind, **extra):
    return [event(e.message_id, kind, n, **extra) for n, e in enumerate(emails)]


@pytest.mark.parametrize(
    "counts,paused",
    [
        ({E.SENT: 500, HARD_BOUNCED: 26}, True),  # 5.2 %
        ({E.SENT: 500, HARD_BOUNCED: 25}, False),  # 5 %: not above
        ({E.SENT: 499, HARD_BOUNCED: 200}, False),  # too few sent to judge
        ({E.SENT: 500, E.BOUNCED: 500}, False),  # soft bounces are not judged
        ({E.SENT: 1000, E.COMPLAINED: 4}, True),  # 0.4 %
        ({E.SENT: 1000, E.COMPLAINED: 3}, False),
    ],
)
def test_the_thresholds(counts, paused):
    assert bool(guard.judge(counts)) is paused


def test_events_taking_a_request_past_the_threshold_pause_it_in_the_same_run():
    mail, emails = request_with(sent=500, waiting=50)
    result = apply_batch(events(emails[:26], "bounced", bounce_type="hard", diagnostic="550 5.1.1 no such user"))
    assert result.paused == 1 and "paused 1 request" in result.summary()
    mail.refresh_from_db()
    assert mail.status == R.PAUSED
    assert mail.paused_reason.startswith("26 of 500 emails sent bounced hard (5.2 %, above 5 %)")
    event_row = AuditEvent.objects.get(request=mail)
    assert event_row.kind == AuditEvent.Kind.PAUSE and event_row.actor is None
    assert (event_row.actor_name, event_row.detail) == ("dbmail_track (reputation guard)", mail.paused_reason)
    # Its waiting emails are not claimed while it is paused; other mail still is.
    other, _ = request_with(sent=0, waiting=3)
    claimed = claims.claim(100)
    assert {e.request_id for e in claimed.emails} == {other.pk}


def test_fewer_events_do_not_pause_and_complaints_count_too(settings):
    mail, emails = request_with(sent=1000)
    apply_batch(events(emails[:3], "complained"))
    mail.refresh_from_db()
    assert mail.status == R.EXPANDED
    apply_batch(events(emails[3:4], "complained"))
    mail.refresh_from_db()
    assert mail.status == R.PAUSED and "drew a complaint" in mail.paused_reason


def test_delivery_reports_never_cost_the_check():
    mail, emails = request_with(sent=10)
    with CaptureQueriesContext(connection) as queries:
        apply_batch(events(emails, "delivered"))
    read = [q["sql"] for q in queries if q["sql"].startswith("SELECT")]
    assert not [sql for sql in read if "dbmail_dailystat" in sql or "dbmail_messagerequest" in sql]


def test_resume_goes_on_where_it_was_records_who_and_keeps_suppressed_addresses_suppressed():
    mail, emails = request_with(sent=500, waiting=10)
    apply_batch(events(emails[:30], "bounced", bounce_type="hard"))
    Suppression.objects.create(address=emails[-1].to_address, reason=Suppression.Reason.COMPLAINED)
    mail.refresh_from_db()
    assert mail.status == R.PAUSED
    staff = UserFactory(username="ops")
    words = guard.resume(mail, user=staff)
    assert "1 email to addresses suppressed meanwhile cancelled" in words
    assert mail.status == R.EXPANDED and mail.paused_reason == ""
    assert mail.guard_baseline == {E.SENT: 500, E.BOUNCED: 30, HARD_BOUNCED: 30}
    last = AuditEvent.objects.filter(request=mail).latest("at", "id")
    assert (last.kind, last.actor, last.detail) == (AuditEvent.Kind.RESUME, staff, words)
    assert TextOfEmail.objects.get(pk=emails[-1].pk).status == E.CANCELLED
    assert len(claims.claim(100).emails) == 9  # claimable again, but the suppressed one
    # After a resume, only the mail sent since is judged: more bounces of the old mail do not pause it again.
    apply_batch(events(emails[30:40], "bounced", bounce_type="hard"))
    mail.refresh_from_db()
    assert mail.status == R.EXPANDED


def test_a_request_paused_while_expanding_resumes_its_expansion():
    mail, emails = request_with(sent=500, status=R.EXPANDING)
    apply_batch(events(emails[:40], "bounced", bounce_type="hard"))
    mail.refresh_from_db()
    assert mail.status == R.PAUSED
    guard.resume(mail)
    assert mail.status == R.QUEUED  # expansion goes on from its checkpoint


def test_a_paused_request_can_be_cancelled():
    mail, emails = request_with(sent=500, waiting=5)
    apply_batch(events(emails[:40], "bounced", bounce_type="hard"))
    mail.refresh_from_db()
    assert mail.cancel(actor=UserFactory(username="ops")) > 0
    assert MessageRequest.objects.get(pk=mail.pk).status == R.CANCELLED
    assert not mail.emails.filter(status=E.QUEUED).exists()


def test_resume_of_a_request_that_is_not_paused_does_nothing():
    mail, _ = request_with(sent=1)
    assert guard.resume(mail) == ""
    assert not AuditEvent.objects.filter(request=mail).exists()


def hard_and_soft(mail):
    counts = rollup.per_request([mail.pk]).get(mail.pk, {})
    return counts.get(HARD_BOUNCED, 0), counts.get(E.BOUNCED, 0)


def test_soft_bounces_alone_never_pause_however_many():
    mail, emails = request_with(sent=600)
    # Every one of them bounced soft: the MTA gave up on a full mailbox, or a report says so outright.
    apply_batch(events(emails[:300], "bounced", bounce_type="soft", diagnostic="452 4.2.2 mailbox full"))
    apply_batch(events(emails[300:], "bounced", diagnostic="451 4.4.1 no answer from host"))  # kind inferred: soft
    mail.refresh_from_db()
    assert mail.status == R.EXPANDED and mail.paused_reason == ""
    assert hard_and_soft(mail) == (0, 600)
    assert not Suppression.objects.exists()


def test_hard_bounces_past_five_percent_after_500_pause_in_the_same_run_soft_ones_beside_them_do_not_count():
    mail, emails = request_with(sent=500, waiting=20)
    apply_batch(events(emails[:200], "bounced", bounce_type="soft"))
    # 25 hard (5 %, not above), some of them emails that had bounced soft before: still not paused.
    apply_batch(events(emails[190:215], "bounced", diagnostic="550 5.1.1 no such user"))  # kind inferred: hard
    mail.refresh_from_db()
    assert mail.status == R.EXPANDED
    assert hard_and_soft(mail) == (25, 215)
    # One more: 26 of 500, in the batch that applies it.
    result = apply_batch(events(emails[215:216], "bounced", bounce_type="hard"))
    assert result.paused == 1
    mail.refresh_from_db()
    assert mail.status == R.PAUSED and mail.paused_reason.startswith("26 of 500 emails sent bounced hard (5.2 %")
    assert not claims.claim(100).emails  # its waiting mail is held


def test_a_hard_bounce_counts_once_per_email_whatever_reports_it_again():
    mail, emails = request_with(sent=500)
    first = emails[0]
    apply_batch(events([first], "bounced", bounce_type="soft", diagnostic="452 4.2.2 full"))
    apply_batch([event(first.message_id, "bounced", 1, bounce_type="hard", source="mta-log")])  # soft, then hard
    apply_batch([event(first.message_id, "bounced", 2, bounce_type="hard", source="webhook")])  # another source
    apply_batch([event(first.message_id, "complained", 3)])  # outranks the bounce, no second hard one
    two = [event(emails[1].message_id, "bounced", n, bounce_type="hard") for n in (4, 5)]  # twice in one batch
    apply_batch(two)
    assert hard_and_soft(mail) == (2, 2)
    # A soft report quoting a hard one's log line in its diagnostic does not pass for one.
    third = emails[2]
    quoted = "452 4.2.2 full; earlier: [x] bounced (hard) from test"
    apply_batch([event(third.message_id, "bounced", 6, bounce_type="soft", diagnostic=quoted)])
    apply_batch([event(third.message_id, "bounced", 7, bounce_type="hard")])
    assert hard_and_soft(mail) == (3, 3)


def test_complaints_past_three_in_a_thousand_pause_soft_bounces_do_not_help():
    mail, emails = request_with(sent=1000)
    apply_batch(events(emails[:100], "bounced", bounce_type="soft"))
    apply_batch([event(e.message_id, "complained", n) for n, e in enumerate(emails[100:103])])  # 0.3 %: not above
    mail.refresh_from_db()
    assert mail.status == R.EXPANDED
    result = apply_batch([event(emails[103].message_id, "complained", 9)])
    assert result.paused == 1
    mail.refresh_from_db()
    assert mail.status == R.PAUSED and mail.paused_reason.startswith("4 of 1,000 emails sent drew a complaint (0.4 %")
