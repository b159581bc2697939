import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dbmail.models import CronHeartbeat, MessageRequest, TextOfEmail

from .conftest import manage, subprocess_env
from .factories import MessageRequestFactory, TextOfEmailFactory, UserFactory

Status = TextOfEmail.Status


def run_cron(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("dbmail_cron", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db(transaction=True)
def test_cron_expands_then_sends_and_records_the_run(smtp_server):
    UserFactory.create_batch(3)
    MessageRequestFactory(recipient_set="all_active")
    TextOfEmailFactory()  # an ad-hoc email waiting too
    out, _ = run_cron("-v", "2")
    assert out.strip() == out.strip().splitlines()[0]  # one line
    assert "expanded 1 request (3 emails); sent 4, deferred 0, dropped 0" in out
    assert len(smtp_server.received) == 4
    beat = CronHeartbeat.objects.get(command="dbmail_cron")
    assert beat.last_success_at and beat.last_summary["sent"] == 4 and beat.last_error == ""


@pytest.mark.django_db(transaction=True)
def test_cron_is_silent_unless_something_failed(smtp_server):
    TextOfEmailFactory()
    assert run_cron() == ("", "")  # not a terminal, nothing failed: cron mails nothing
    smtp_server.script("x@example.net", "550 5.1.1 unknown")
    TextOfEmailFactory(to_address="x@example.net")
    out, _ = run_cron()
    assert "dropped 1" in out and "x@example.net: 5.1.1 unknown" in out


@pytest.mark.django_db(transaction=True)
def test_cron_fails_when_the_smtp_server_cannot_be_reached(settings):
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    TextOfEmailFactory()
    with pytest.raises(CommandError, match="cannot reach the SMTP server"):
        run_cron()
    beat = CronHeartbeat.objects.get()
    assert beat.last_success_at is None and "cannot reach" in beat.last_error
    assert TextOfEmail.objects.get().status == Status.DEFERRED


@pytest.mark.django_db(transaction=True)
def test_limits(smtp_server):
    TextOfEmailFactory.create_batch(5)
    run_cron("--max-messages", "2", "--batch-size", "1")
    assert len(smtp_server.received) == 2


def test_cron_exits_nonzero_when_the_database_is_down():
    env = subprocess_env(DATABASE_URL="postgres://postgres@127.0.0.1:9/nowhere")
    done = manage("dbmail_cron", env=env, timeout=60)
    assert done.returncode == 1
    assert "cannot reach the database" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.django_db(transaction=True)
def test_loop_stops_cleanly_on_sigterm(smtp_server):
    import signal
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    TextOfEmailFactory.create_batch(3)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dbmail_cron", "--loop", "--interval", "0.5", "-v", "2"],
        env=subprocess_env(smtp_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    TextOfEmailFactory()  # picked up by a later round of the loop
    while len(smtp_server.received) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert len(smtp_server.received) == 4
    assert "sent 3" in out and "sent 1" in out


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_request_sends_nothing(smtp_server):
    UserFactory.create_batch(2)
    request = MessageRequestFactory(recipient_set="all_active")
    request.cancel()
    run_cron()
    assert smtp_server.received == []
    assert MessageRequest.objects.get().status == MessageRequest.Status.CANCELLED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stage", ["mail", "message"])
def test_max_seconds_is_kept_to_within_a_second_whatever_the_smtp_timeout(smtp_server, settings, stage):
    import time

    settings.EMAIL_TIMEOUT = 30  # a stalled server would hold a message this long
    smtp_server.timeout_seconds = 30
    smtp_server.fault(stage, "timeout")
    TextOfEmailFactory.create_batch(3)
    started = time.monotonic()
    out, _ = run_cron("--max-seconds", "1.5", "-v", "2")
    took = time.monotonic() - started
    assert took < 2.5, out
    assert "sent 0" in out
    assert not TextOfEmail.objects.filter(status=Status.SENDING).exists()  # what was not tried went back


@pytest.mark.django_db(transaction=True)
def test_max_seconds_counts_the_expansion_too(smtp_server, settings):
    import time

    from dbmail.intake import expand

    UserFactory.create_batch(3)
    MessageRequestFactory(recipient_set="all_active")
    request = expand.claim_request()
    assert expand.expand(request, deadline=time.monotonic()) == 0  # past its deadline: not a chunk more
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDING and request.expand_lease_until <= timezone.now()
    assert expand.claim_request().pk == request.pk  # given back at once, not after the lease
    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=timezone.now())
    run_cron()
    assert len(smtp_server.received) == 3
