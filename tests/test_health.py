"""dbmail_status: every moving part of dbmail checked against its thresholds, in words, exit 0/1/2/3, --json."""

import io
import json
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from dbmail.intake import expand
from dbmail.models import CronHeartbeat, MessageRequest, SenderAccount, TextOfEmail, TrackingQueueItem
from dbmail.ops import health

from .conftest import manage, subprocess_env
from .factories import MessageRequestFactory, TextOfEmailFactory, UserFactory

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status
AGO = timedelta(hours=3)


def status(*args):
    """(exit code, stdout) of dbmail_status."""
    out = io.StringIO()
    try:
        call_command("dbmail_status", *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


def finding(name, **options):
    return next(f for f in health.run(**options).findings if f.check == name)


def ago(**kwargs):
    return timezone.now() - timedelta(**kwargs)


def test_all_is_well_exit_0_with_counts_and_every_part_in_a_line():
    TextOfEmailFactory.create_batch(2)
    TextOfEmailFactory(status=Status.SENT)
    health.beat("dbmail_cron", timezone.now())
    code, out = status()
    assert code == 0
    assert out.splitlines()[0] == "MAILSITE OK"
    for check in ("sender", "reputation", "expansion", "tracking", "log follower", "dkim", "imap poller", "gate"):
        assert re.search(rf"^  {check} +ok +\S", out, re.M), check
    assert "queued              2" in out and "sent                1" in out
    assert "last successful dbmail_cron: 0 seconds ago (20" in out


def test_mailgate_checks_are_registered_by_its_app_not_imported_by_dbmail():
    assert health.registered() == [
        "sender",
        "reputation",
        "expansion",
        "tracking",
        "log follower",
        "dkim",
        "imap poller",
        "gate",
    ]
    import ast
    from pathlib import Path

    for path in Path(health.__file__).resolve().parents[1].rglob("*.py"):  # the whole dbmail package
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "mailgate" for n in names), path


# --- sender ----------------------------------------------------------------------------------


def test_due_mail_warns_then_is_critical_and_clears_once_sent(settings):
    settings.DBMAIL_HEALTH_WARNING_SECONDS, settings.DBMAIL_STUCK_AFTER_SECONDS = 900, 3600
    health.beat("dbmail_cron", timezone.now())
    email = TextOfEmailFactory(next_attempt_at=ago(minutes=20))
    code, out = status()
    assert code == 1 and out.startswith("MAILSITE WARNING: sender: an email has been due for 20 minutes")
    TextOfEmail.objects.filter(pk=email.pk).update(next_attempt_at=ago(hours=3))
    code, out = status()
    assert code == 2 and "an email has been due for 3 hours" in out.splitlines()[0]
    assert status("--stuck-after", "4h")[0] == 1  # within the critical threshold given: a warning only
    TextOfEmail.objects.filter(pk=email.pk).update(status=Status.SENT)
    assert status()[0] == 0


def test_waiting_mail_with_no_recent_run_is_critical_until_a_run_succeeds():
    TextOfEmailFactory()
    code, out = status()
    assert code == 2 and "mail is waiting and dbmail_cron last succeeded never" in out
    health.beat("dbmail_cron", timezone.now(), error="cannot reach the SMTP server: refused")
    code, out = status()
    assert code == 2 and "succeeded never" in out  # a failing run is not a success
    assert "the last dbmail_cron run on" in out and "failed: cannot reach the SMTP server: refused" in out
    health.beat("dbmail_cron", timezone.now())
    assert status()[0] == 0


def test_a_long_dead_lease_is_critical():
    TextOfEmailFactory(status=Status.SENDING, leased_until=ago(hours=2))
    health.beat("dbmail_cron", timezone.now())
    code, out = status("--stuck-after", "1h")
    assert code == 2 and "lease ran out" in out


def test_held_mail_is_neither_due_nor_stuck_but_is_counted_and_named():
    quiet = SenderAccount.objects.create(address="quiet@example.org", active=False)
    TextOfEmailFactory.create_batch(2, account=quiet, next_attempt_at=ago(days=2))
    MessageRequestFactory(sender=quiet, send_at=ago(days=2))
    code, out = status()
    assert code == 0, out  # nothing waits that could be sent; an operator chose to hold it
    assert "2 email(s) held while their sender account is inactive (quiet@example.org)" in out
    assert "1 request(s) held" in out and "held                2" in out and "requests: held 1" in out
    report = json.loads(status("--json")[1])
    assert report["emails"] == {"held": 2} and report["requests"] == {"held": 1}


# --- expansion -------------------------------------------------------------------------------


def test_a_failed_request_is_critical_until_it_is_retried_or_cancelled():
    health.beat("dbmail_cron", timezone.now())
    bad = MessageRequestFactory(recipient_set="groups", recipient_params={"groups": 5})
    expand.expand_due()
    code, out = status()
    assert code == 2
    assert f"expansion: 1 request(s) failed (retry once fixed, or cancel): #{bad.pk}" in out.splitlines()[0]
    assert "must be a list of group names" in out
    MessageRequest.objects.filter(pk=bad.pk).update(recipient_params={"groups": []})
    bad.retry()
    assert status()[0] == 0
    expand.expand_due()  # an empty group: expanded, nothing to send
    assert MessageRequest.objects.get(pk=bad.pk).status == MessageRequest.Status.EXPANDED
    other = MessageRequestFactory(recipient_set="retired_set")
    expand.expand_due()
    assert status()[0] == 2
    MessageRequest.objects.get(pk=other.pk).cancel()
    assert status()[0] == 0


def test_a_request_stuck_expanding_past_its_lease_fires_and_clears():
    health.beat("dbmail_cron", timezone.now())
    UserFactory()
    request = MessageRequestFactory()
    claimed = expand.claim_request()
    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=ago(minutes=30))
    found = finding("expansion")
    assert found.state == health.WARNING and "stuck expanding for 30 minutes past its lease" in found.summary
    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=ago(hours=2))
    assert finding("expansion").state == health.CRITICAL
    expand.expand(expand.claim_request() or claimed)  # the next run takes it over
    assert finding("expansion").state == health.OK


def test_a_request_due_for_long_and_not_expanded_fires():
    health.beat("dbmail_cron", timezone.now())
    request = MessageRequestFactory(send_at=ago(minutes=20))
    found = finding("expansion")
    assert found.state == health.WARNING and "due for expansion for 20 minutes" in found.summary
    MessageRequestFactory(send_at=timezone.now() + timedelta(days=1))  # scheduled: not due, not a problem
    expand.expand_due()
    assert MessageRequest.objects.get(pk=request.pk).status == MessageRequest.Status.EXPANDED
    assert finding("expansion").state == health.OK


# --- tracking consumer -----------------------------------------------------------------------


def test_tracking_backlog_age_in_the_database_queue_fires_and_clears(settings):
    settings.TRACKING_QUEUE_URL = ""
    settings.TRACKING_HEALTH_WARNING_SECONDS, settings.TRACKING_HEALTH_CRITICAL_SECONDS = 600, 3600
    assert finding("tracking").summary == "no tracking event waiting (database queue)"
    TrackingQueueItem.objects.create(payload={"event": "delivered"}, enqueued_at=ago(minutes=15))
    TrackingQueueItem.objects.create(payload={"event": "delivered"})
    found = finding("tracking")
    assert found.state == health.WARNING
    assert found.summary.startswith("2 tracking event(s) waiting, the oldest for 15 minutes (database queue)")
    assert "dbmail_track last succeeded never" in found.summary
    TrackingQueueItem.objects.filter(enqueued_at__lt=ago(minutes=10)).update(enqueued_at=ago(hours=2))
    assert finding("tracking").state == health.CRITICAL
    call_command("dbmail_track")  # the consumer runs: the queue empties
    assert finding("tracking").state == health.OK and not TrackingQueueItem.objects.exists()


def test_rabbitmq_depth_by_passive_declare_and_unknown_when_unreachable(rabbit_backend, settings):
    from dbmail.track import queue as tracking

    from .tracking_support import tracked

    settings.TRACKING_HEALTH_DEPTH_WARNING, settings.TRACKING_HEALTH_DEPTH_CRITICAL = 2, 3
    found = finding("tracking")
    assert found.state == health.UNKNOWN and "does not exist" in found.summary  # nothing declared it yet
    tracking.publish(tracked("<a@example.org>"))
    health.beat("dbmail_track", timezone.now())
    found = finding("tracking")
    assert found.state == health.OK and found.details == {"waiting": 1, "consumers": 0}
    tracking.publish_many([tracked("<b@example.org>"), tracked("<c@example.org>")])
    assert finding("tracking").state == health.CRITICAL
    CronHeartbeat.objects.update(last_success_at=ago(hours=2))
    assert "dbmail_track last succeeded 2 hours ago" in finding("tracking").summary
    call_command("dbmail_track")
    assert finding("tracking").state == health.OK and finding("tracking").details["waiting"] == 0

    settings.TRACKING_QUEUE_URL = "amqp://guest:guest@127.0.0.1:9/%2F"  # nothing listens there
    code, out = status()
    found = finding("tracking")
    assert found.state == health.UNKNOWN and found.summary.startswith("cannot tell the RabbitMQ backlog: cannot reach")
    assert code == 3 and out.startswith("MAILSITE UNKNOWN: tracking: cannot tell the RabbitMQ backlog")


# --- log follower ----------------------------------------------------------------------------


def test_log_follower_heartbeat_fires_when_old_and_is_quiet_when_not_used(settings):
    settings.TRACKING_HEALTH_FOLLOWER_WARNING_SECONDS, settings.TRACKING_HEALTH_FOLLOWER_CRITICAL_SECONDS = 300, 1800
    assert finding("log follower").summary.startswith("not in use")
    health.beat(health.FOLLOWER, timezone.now(), {"path": "/var/log/mail.log"})
    found = finding("log follower")
    assert found.state == health.OK and "follows /var/log/mail.log" in found.summary
    CronHeartbeat.objects.filter(command=health.FOLLOWER).update(last_success_at=ago(minutes=10))
    assert finding("log follower").state == health.WARNING
    CronHeartbeat.objects.filter(command=health.FOLLOWER).update(last_success_at=ago(hours=1), last_error="queue down")
    found = finding("log follower")
    assert (
        found.state == health.CRITICAL
        and "no sign of life for 1 hour" in found.summary
        and "queue down" in found.summary
    )
    health.beat(health.FOLLOWER, timezone.now(), {"path": "/var/log/mail.log"})
    assert finding("log follower").state == health.OK


# --- the command -----------------------------------------------------------------------------


def test_json_has_every_check_the_state_and_the_counts():
    TextOfEmailFactory(next_attempt_at=ago(hours=3))
    code, out = status("--json")
    data = json.loads(out)
    assert code == 2 and (data["state"], data["code"]) == ("critical", 2)
    assert [c["check"] for c in data["checks"]] == health.registered()
    sender = data["checks"][0]
    assert sender["state"] == "critical" and "due for 3 hours" in sender["summary"]
    assert sender["details"]["oldest_due_seconds"] >= 3 * 3600
    assert data["emails"] == {"queued": 1} and data["oldest_due_seconds"] >= 10800


def test_a_broken_check_is_unknown_and_the_others_still_run():
    def broken(now, options):
        raise RuntimeError("no idea")

    health.register("broken", broken)
    try:
        health.beat("dbmail_cron", timezone.now())
        code, out = status()
    finally:
        health._CHECKS.pop("broken")
    assert code == 3 and "broken: the check itself failed: RuntimeError: no idea" in out and "sender " in out


def test_unreachable_database_is_critical_in_words():
    env = subprocess_env(DATABASE_URL="postgres://postgres@127.0.0.1:9/nowhere")
    done = manage("dbmail_status", env=env, timeout=60)
    assert done.returncode == 2 and done.stdout.startswith("MAILSITE CRITICAL: cannot reach the database")
    assert "Traceback" not in done.stderr
    done = manage("dbmail_status", "--json", env=env, timeout=60)
    assert done.returncode == 2 and json.loads(done.stdout)["state"] == "critical"


def test_warning_thresholds_above_critical_are_refused_at_start_up():
    done = manage("check", env=subprocess_env(DBMAIL_HEALTH_WARNING_SECONDS="7200"), timeout=60)
    assert done.returncode != 0
    assert "DBMAIL_HEALTH_WARNING_SECONDS must not be above DBMAIL_STUCK_AFTER_SECONDS" in done.stderr


def test_shows_emails_possibly_delivered_twice_and_current_sending_problems():
    from dbmail.models import SendingProblem

    from .factories import SenderAccountFactory

    TextOfEmailFactory(status=TextOfEmail.Status.SENT, possibly_delivered=1)
    TextOfEmailFactory(status=TextOfEmail.Status.DEFERRED, possibly_delivered=1)
    TextOfEmailFactory(status=TextOfEmail.Status.SENT)
    health.beat("dbmail_cron", timezone.now())
    report = health.run()
    assert report.possibly_delivered == 2 and report.sending_problems == [] and report.state == health.OK
    account = SenderAccountFactory(address="club@example.org")
    SendingProblem.objects.create(
        key="x",
        account=account,
        server="smtp.example.org:25",
        stage="mail",
        smtp_code=553,
        emails_deferred=7,
        text="MAIL FROM: 553 5.7.1 sender refused",
    )
    SendingProblem.objects.create(
        key="y", server="smtp.example.org:25", stage="connect", text="old", resolved_at=timezone.now()
    )
    report = health.run()
    assert report.possibly_delivered == 2 and [p.key for p in report.sending_problems] == ["x"]
    code, out = status()
    assert code == 1 and "sender: sending problem: club@example.org via smtp.example.org:25" in out.splitlines()[0]
    assert "outcome unknown (possibly delivered): 2 emails" in out
    (line,) = [line for line in out.splitlines() if line.startswith("sending problem:")]
    assert line.startswith("sending problem: club@example.org via smtp.example.org:25, since 20")
    assert line.endswith("(7 deferred): MAIL FROM: 553 5.7.1 sender refused")
    data = json.loads(status("--json")[1])
    assert data["possibly_delivered"] == 2 and data["sending_problems"][0]["smtp_code"] == 553
    SendingProblem.objects.filter(key="x").update(resolved_at=timezone.now())  # a later run got through
    assert status()[0] == 0


# --- reputation: slowed destinations, daily caps, paused requests ------------------------------------


def test_a_slowed_destination_a_reached_cap_and_a_paused_request_are_shown_and_since_when():
    from dbmail.models import PacingBucket, SenderDailyCount
    from dbmail.send import buckets, caps

    assert finding("reputation").state == health.OK
    buckets.push_back("gmail", 600, "421 4.7.0 try again later", timezone.now())
    news = SenderAccount.objects.create(address="news@example.org", daily_cap=2)
    SenderDailyCount.objects.create(account=news, day=caps.day_of(timezone.now()), taken=2)
    TextOfEmailFactory(account=news)
    paused = MessageRequestFactory(
        status=MessageRequest.Status.PAUSED, paused_at=timezone.now(), paused_reason="30 of 500 came back bounced"
    )
    TextOfEmailFactory(request=paused, next_attempt_at=ago(days=2))
    health.beat("dbmail_cron", timezone.now())
    code, out = status()
    assert code == 1  # a warning: a person should look, nothing is broken
    line = next(line for line in out.splitlines() if line.startswith("  reputation"))
    since = PacingBucket.objects.get(name="gmail").slowed_since
    assert f"destination gmail slowed to 300 a minute (600 a minute configured) since {since:%Y-%m-%d %H:%M}" in line
    assert "421 4.7.0 try again later" in line
    assert "news@example.org: waiting: daily cap reached, resumes tomorrow 00:00 UTC (2 of 2 today)" in line
    assert f"request #{paused.pk} paused since" in line and "30 of 500 came back bounced" in line
    # Waiting by design is not mail stuck: the sender's check stays quiet about it.
    assert finding("sender").state == health.OK
    details = finding("reputation").details
    assert details["slowed"][0]["group"] == "gmail" and details["paused_requests"] == [paused.pk]


def test_times_are_said_the_way_people_say_them():
    now = timezone.now()
    assert health.ago(now - timedelta(minutes=3, seconds=10), now) == "3 minutes ago"
    assert health.ago(now - timedelta(seconds=1), now) == "1 second ago"
    assert health.ago(now - timedelta(hours=2, minutes=5), now) == "2 hours 5 minutes ago"
    assert health.ago(now - timedelta(days=3, hours=1), now) == "3 days ago"
    assert health.ago(now + timedelta(seconds=30), now) == "in 30 seconds"
    assert health.ago(None) == "never"


def test_status_says_when_the_last_run_was_not_its_raw_timestamp():
    from dbmail.models import CronHeartbeat

    TextOfEmailFactory(next_attempt_at=timezone.now() - timedelta(minutes=2))
    health.beat("dbmail_cron", timezone.now())
    CronHeartbeat.objects.update(last_success_at=timezone.now() - timedelta(minutes=3, seconds=5))
    _, out = status()
    assert "last successful dbmail_cron: 3 minutes ago (" in out
    assert "oldest due: due for 2 minutes" in out
    assert not re.search(r"\d\d:\d\d:\d\d", out) and "+00:00" not in out  # no raw timestamp
    _, raw = status("--json")
    assert json.loads(raw)["last_dbmail_cron_success"].endswith("+00:00")  # --json keeps ISO 8601


def test_unsigned_mail_is_a_warning_per_domain():
    from dbmail.models import UnsignedMail
    from dbmail.ops import dkimkeys

    health.beat("dbmail_cron", timezone.now())
    assert finding("dkim").state == health.OK
    today = timezone.localdate()
    UnsignedMail.objects.create(domain="other.example", day=today, count=3)
    UnsignedMail.objects.create(domain="other.example", day=today - timedelta(days=1), count=2)
    UnsignedMail.objects.create(domain="old.example", day=today - timedelta(days=3), count=9)  # long ago
    dkimkeys.generate("keyed.example", algorithm="ed25519")
    UnsignedMail.objects.create(domain="keyed.example", day=today, count=1)  # it has a key by now
    code, out = status()
    assert code == 1 and out.splitlines()[0].startswith("MAILSITE WARNING: dkim: ")
    assert (
        "5 email(s) from other.example went out without a DKIM signature since yesterday: "
        "no key (dbmail_dkim generate other.example)"
    ) in out
    assert "keyed.example went out without a DKIM signature since yesterday: it has a key now" in out
    assert "old.example" not in out
    dkim = next(c for c in json.loads(status("--json")[1])["checks"] if c["check"] == "dkim")
    assert dkim["state"] == "warning" and dkim["details"]["unsigned"] == {"keyed.example": 1, "other.example": 5}


def test_a_heartbeat_is_one_statement_and_a_failed_run_keeps_the_last_success(django_assert_num_queries):
    first = timezone.now()
    with django_assert_num_queries(1):  # INSERT ... ON CONFLICT DO UPDATE, at the end of every run
        health.beat("dbmail_cron", first, {"sent": 3})
    (row,) = CronHeartbeat.objects.all()
    succeeded = row.last_success_at
    assert (
        row.last_started_at == first and succeeded >= first and (row.last_summary, row.last_error) == ({"sent": 3}, "")
    )
    with django_assert_num_queries(1):
        health.beat("dbmail_cron", timezone.now(), error="cannot reach the SMTP server: refused")
    (row,) = CronHeartbeat.objects.all()
    assert row.last_success_at == succeeded and row.last_started_at > first
    assert (row.last_summary, row.last_error) == ({}, "cannot reach the SMTP server: refused")
    health.beat("dbmail_cron", timezone.now())
    (row,) = CronHeartbeat.objects.all()
    assert row.last_success_at > succeeded and row.last_error == ""
