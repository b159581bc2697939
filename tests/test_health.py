import io
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dbmail.models import TextOfEmail
from dbmail.ops import health

from .factories import TextOfEmailFactory

pytestmark = pytest.mark.django_db


def status(*args):
    out = io.StringIO()
    call_command("dbmail_status", *args, stdout=out)
    return out.getvalue()


def test_reports_depth_and_is_happy_when_mail_flows():
    TextOfEmailFactory.create_batch(2)
    TextOfEmailFactory(status=TextOfEmail.Status.SENT)
    health.beat("dbmail_cron", timezone.now())
    out = status()
    assert "queued              2" in out and "sent                1" in out
    assert "last successful dbmail_cron: 0 seconds ago (20" in out


def test_stuck_mail_exits_2_with_the_reason():
    TextOfEmailFactory(next_attempt_at=timezone.now() - timedelta(hours=3))
    health.beat("dbmail_cron", timezone.now())
    with pytest.raises(CommandError, match="an email has been due for 3 hours") as exc:
        status("--stuck-after", "2h")
    assert exc.value.returncode == 2
    status("--stuck-after", "4h")  # within the threshold


def test_waiting_mail_with_no_recent_run_is_stuck():
    TextOfEmailFactory()
    with pytest.raises(CommandError, match="dbmail_cron last succeeded never"):
        status()
    health.beat("dbmail_cron", timezone.now(), error="cannot reach the SMTP server")
    with pytest.raises(CommandError, match="never"):
        status()  # a failing run is not a success


def test_a_long_dead_lease_is_stuck():
    TextOfEmailFactory(status=TextOfEmail.Status.SENDING, leased_until=timezone.now() - timedelta(hours=2))
    health.beat("dbmail_cron", timezone.now())
    with pytest.raises(CommandError, match="lease ran out"):
        status("--stuck-after", "1h")


def test_times_are_said_the_way_people_say_them():
    now = timezone.now()
    assert health.ago(now - timedelta(minutes=3, seconds=10), now) == "3 minutes ago"
    assert health.ago(now - timedelta(seconds=1), now) == "1 second ago"
    assert health.ago(now - timedelta(hours=2, minutes=5), now) == "2 hours 5 minutes ago"
    assert health.ago(now - timedelta(days=3, hours=1), now) == "3 days ago"
    assert health.ago(now + timedelta(seconds=30), now) == "in 30 seconds"
    assert health.ago(None) == "never"


def test_status_says_when_the_last_run_was_not_its_raw_timestamp():
    TextOfEmailFactory(next_attempt_at=timezone.now() - timedelta(minutes=2))
    health.beat("dbmail_cron", timezone.now())
    from dbmail.models import CronHeartbeat

    CronHeartbeat.objects.update(last_success_at=timezone.now() - timedelta(minutes=3, seconds=5))
    out = status()
    assert "last successful dbmail_cron: 3 minutes ago (" in out
    assert "oldest due: due for 2 minutes" in out
    assert not re.search(r"\d\d:\d\d:\d\d", out) and "+00:00" not in out  # no raw timestamp


def test_json_keeps_iso_times():
    import json

    health.beat("dbmail_cron", timezone.now())
    TextOfEmailFactory()
    report = json.loads(status("--json"))
    assert report["counts"] == {"queued": 1} and report["stuck"] is False
    assert timezone.datetime.fromisoformat(report["last_success"]) <= timezone.now()
