import io
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
    assert "last successful dbmail_cron: 20" in out


def test_stuck_mail_exits_2_with_the_reason():
    TextOfEmailFactory(next_attempt_at=timezone.now() - timedelta(hours=3))
    health.beat("dbmail_cron", timezone.now())
    with pytest.raises(CommandError, match="an email has been due for 3h") as exc:
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


def test_shows_emails_possibly_delivered_twice_and_current_sending_problems():
    from dbmail.models import SendingProblem

    from .factories import SenderAccountFactory

    TextOfEmailFactory(status=TextOfEmail.Status.SENT, possibly_delivered=1)
    TextOfEmailFactory(status=TextOfEmail.Status.DEFERRED, possibly_delivered=1)
    TextOfEmailFactory(status=TextOfEmail.Status.SENT)
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
    health.beat("dbmail_cron", timezone.now())
    report = health.check(timedelta(hours=1))
    assert report.possibly_delivered == 2 and [p.key for p in report.problems] == ["x"]
    out = status()
    assert "outcome unknown (possibly delivered): 2 emails" in out
    (line,) = [line for line in out.splitlines() if line.startswith("sending problem:")]
    assert line.startswith("sending problem: club@example.org via smtp.example.org:25, since 20")
    assert line.endswith("(7 deferred): MAIL FROM: 553 5.7.1 sender refused")
