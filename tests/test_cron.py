import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dbmail.models import CronHeartbeat, MessageRequest, TextOfEmail

from . import poison
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


# --- One poisoned request never stops the sender (issue 11, point 1) -------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", sorted(poison.POISONS))
def test_a_poisoned_request_fails_alone_and_the_run_sends_everything_else(kind, smtp_server):
    UserFactory.create_batch(2)
    fields, words = poison.POISONS[kind]
    bad = MessageRequestFactory(send_at=timezone.now() - timedelta(minutes=5), **fields)
    good = MessageRequestFactory(recipient_set="addresses", recipient_params={"rows": ["ok1@example.net"]})
    TextOfEmailFactory(to_address="adhoc@example.net")

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=r"1 request\(s\) failed") as raised:
        call_command("dbmail_cron", stdout=out, stderr=err)
    assert raised.value.returncode == 1
    assert f"dbmail_cron: request #{bad.pk}: " in err.getvalue() and words in err.getvalue()
    assert "expanded 2 requests" in out.getvalue() and "1 failed" in out.getvalue()
    assert {r for m in smtp_server.received for r in m.rcpt_tos} >= {"ok1@example.net", "adhoc@example.net"}
    assert MessageRequest.objects.get(pk=bad.pk).status == MessageRequest.Status.FAILED
    assert MessageRequest.objects.get(pk=good.pk).status == MessageRequest.Status.EXPANDED
    beat = CronHeartbeat.objects.get(command="dbmail_cron")  # the run itself succeeded
    assert beat.last_success_at and beat.last_error == "" and beat.last_summary["failed_requests"] == 1

    assert run_cron() == ("", "")  # the next run has nothing to say: the failure is reported once


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", poison.BUILTIN)
def test_the_command_exits_1_with_the_failure_in_one_line(kind, smtp_server):
    fields, words = poison.POISONS[kind]
    bad = MessageRequestFactory(**fields)
    MessageRequestFactory(recipient_set="addresses", recipient_params={"rows": ["fine@example.net"]})
    done = manage("dbmail_cron", env=subprocess_env(smtp_server), timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and words in done.stderr
    assert f"request #{bad.pk}: " in done.stderr and "1 request(s) failed" in done.stderr
    assert [m.rcpt_tos for m in smtp_server.received] == [["fine@example.net"]]


@pytest.mark.django_db(transaction=True)
def test_the_loop_survives_poisoned_requests_and_keeps_sending(smtp_server):
    import signal
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    first = MessageRequestFactory(recipient_set="groups", recipient_params={"groups": 5})
    MessageRequestFactory(recipient_set="addresses", recipient_params={"rows": ["one@example.net"]})
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dbmail_cron", "--loop", "--interval", "0.3", "-v", "2"],
        env=subprocess_env(smtp_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60

        def wait_for(n):
            while len(smtp_server.received) < n and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)

        wait_for(1)
        second = MessageRequestFactory(recipient_set="retired_set")  # poisoned again, in a later round
        MessageRequestFactory(recipient_set="addresses", recipient_params={"rows": ["two@example.net"]})
        wait_for(2)
        assert proc.poll() is None, "the loop exited"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == ["one@example.net", "two@example.net"]
    assert f"request #{first.pk}: " in err and f"request #{second.pk}: " in err and "Traceback" not in err
    assert set(MessageRequest.objects.filter(pk__in=[first.pk, second.pk]).values_list("status", flat=True)) == {
        "failed"
    }


# --- Deactivating a sender account holds its mail (issue 11, point 10) -----------------------


@pytest.mark.django_db(transaction=True)
def test_an_inactive_accounts_mail_is_held_then_sent_once_it_is_active_again(smtp_server):
    from dbmail.models import SenderAccount

    quiet = SenderAccount.objects.create(address="quiet@example.org")
    expanded = MessageRequestFactory(sender=quiet, recipient_set="addresses", recipient_params={"rows": ["a@x.net"]})
    call_command("dbmail_cron", "--max-messages", "0")  # expanded, nothing sent yet
    assert expanded.emails.get().status == Status.QUEUED
    due = MessageRequestFactory(sender=quiet, recipient_set="addresses", recipient_params={"rows": ["b@x.net"]})
    adhoc = TextOfEmailFactory(account=quiet, to_address="c@x.net")
    cancelled = TextOfEmailFactory(account=quiet, to_address="never@x.net")
    TextOfEmailFactory(to_address="other@x.net")  # another account's mail goes on
    SenderAccount.objects.filter(pk=quiet.pk).update(active=False)

    run_cron()
    assert [m.rcpt_tos for m in smtp_server.received] == [["other@x.net"]]
    assert MessageRequest.objects.get(pk=due.pk).status == MessageRequest.Status.QUEUED  # not expanded either
    assert TextOfEmail.counts(TextOfEmail.objects.all()) == {"held": 3, "sent": 1}
    TextOfEmail.cancel(TextOfEmail.objects.filter(pk=cancelled.pk))  # an admin may still cancel held mail

    SenderAccount.objects.filter(pk=quiet.pk).update(active=True)
    run_cron()
    rcpts = sorted(r for m in smtp_server.received for r in m.rcpt_tos)
    assert rcpts == ["a@x.net", "b@x.net", "c@x.net", "other@x.net"]
    adhoc.refresh_from_db()
    assert adhoc.status == Status.SENT and adhoc.attempts == 1  # holding cost it no attempt
    assert TextOfEmail.objects.get(pk=cancelled.pk).status == Status.CANCELLED
