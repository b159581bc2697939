"""mailgate's health checks in dbmail_status: the IMAP poller (real Dovecot) and the gate's answers to the MTA."""

import io
from datetime import timedelta

import pytest
from django.utils import timezone

from dbmail.ops import health
from mailgate import health as gate_health
from mailgate.gate import receive as gate
from mailgate.mailboxes import imap
from mailgate.models import GateHeartbeat, InboundMessage, MailAccount, MailFolder

from .conftest import manage, subprocess_env
from .factories import EmailListFactory, MailFolderFactory, mail_fixture
from .mailboxes import account_on, plain

pytestmark = pytest.mark.django_db


def finding(name):
    return next(f for f in health.run().findings if f.check == name)


def ago(**kwargs):
    return timezone.now() - timedelta(**kwargs)


# --- IMAP poller -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def test_a_folder_not_polled_for_many_intervals_fires_and_a_real_poll_clears_it(dovecot, imap_user, settings):
    settings.MAILGATE_HEALTH_IMAP_WARNING_INTERVALS, settings.MAILGATE_HEALTH_IMAP_CRITICAL_INTERVALS = 10, 30
    assert finding("imap poller").summary == "no IMAP folder enabled"
    dovecot.append(imap_user[0], "INBOX", plain())
    folder = MailFolderFactory(account=account_on(dovecot, imap_user), options={"after_read_timeout": 120})
    assert finding("imap poller").state == health.OK  # the account is new: not overdue yet

    MailFolder.objects.filter(pk=folder.pk).update(last_polled_at=ago(minutes=25))  # 12.5 intervals of 2 minutes
    found = finding("imap poller")
    assert found.state == health.WARNING and found.details["late"] == [folder.pk]
    assert f"{folder}: last polled 25 minutes ago (every 120s expected)" in found.summary
    MailFolder.objects.filter(pk=folder.pk).update(last_polled_at=ago(hours=2))
    assert finding("imap poller").state == health.CRITICAL

    assert not imap.poll_due().errors  # the poller runs (what mailgate_imap does each round)
    found = finding("imap poller")
    assert found.state == health.OK and found.summary == "1 folder(s) polled on time"


def test_a_never_polled_folder_counts_from_its_accounts_creation_and_short_intervals_from_a_minute(settings):
    folder = MailFolderFactory(options={"after_read_timeout": 0})  # polled every round
    MailAccount.objects.filter(pk=folder.account_id).update(created_at=ago(minutes=5))
    assert finding("imap poller").state == health.OK  # 5 minutes < 10 x one minute
    MailAccount.objects.filter(pk=folder.account_id).update(created_at=ago(minutes=15))
    found = finding("imap poller")
    assert found.state == health.WARNING and "never polled" in found.summary
    MailFolder.objects.filter(pk=folder.pk).update(enabled=False)
    assert finding("imap poller").state == health.OK


def test_a_failing_or_vanished_folder_warns():
    folder = MailFolderFactory(last_polled_at=timezone.now(), last_error="LOGIN failed: authentication failed")
    found = finding("imap poller")
    assert found.state == health.WARNING and "the last poll failed: LOGIN failed" in found.summary
    MailFolder.objects.filter(pk=folder.pk).update(last_error="")
    assert finding("imap poller").state == health.OK
    MailFolder.objects.filter(pk=folder.pk).update(exists_on_server=False)
    assert "no longer exists on the server" in finding("imap poller").summary


# --- The gate --------------------------------------------------------------------------------


def answer(recipient):
    """The gate as the MTA runs it, in this process; returns its exit code."""
    out, err = io.StringIO(), io.StringIO()
    stdin = io.BytesIO(mail_fixture("plain.eml"))
    return gate.main(stdin, out, err, {}, recipient=recipient, sender="ann@example.com")


def test_a_run_of_75s_is_critical_and_one_accepted_message_clears_it(settings):
    settings.MAILGATE_HEALTH_TEMPFAILS_CRITICAL = 3
    EmailListFactory(regex="desk", addresses="desk-person@example.org")
    assert finding("gate").summary == "no message yet"
    assert answer("") == 75  # the MTA's pipe passes no recipient: a configuration fault that repeats
    found = finding("gate")
    assert (
        found.state == health.WARNING and "last answered 75 0 seconds ago: no envelope recipient given" in found.summary
    )
    assert answer("") == 75 and answer("") == 75
    found = finding("gate")
    assert found.state == health.CRITICAL and "answered 75 (temporary failure) 3 times in a row" in found.summary
    assert GateHeartbeat.objects.get().tempfails_total == 3

    assert answer("desk@example.org") == 0
    found = finding("gate")
    assert found.state == health.OK and found.summary.startswith("last message accepted 0 seconds ago")
    assert GateHeartbeat.objects.get().tempfails_in_a_row == 0


def test_recent_messages_that_failed_processing_warn_until_old_or_processed_again(settings):
    settings.MAILGATE_HEALTH_TEMPFAIL_WINDOW_SECONDS = 3600
    inbound = InboundMessage.objects.create(
        envelope_recipient="desk@example.org", raw=b"x", status=InboundMessage.Status.FAILED
    )
    found = finding("gate")
    assert (
        found.state == health.WARNING and "1 inbound message(s) failed processing in the last 1 hour" in found.summary
    )
    assert f"#{inbound.pk}" in found.summary
    InboundMessage.objects.filter(pk=inbound.pk).update(received_at=ago(hours=2))
    assert finding("gate").state == health.OK


def test_a_75_because_the_database_is_down_writes_nothing():
    gate_health.record_answer(gate.Result(75, "temporary failure (database): connection refused"))
    assert not GateHeartbeat.objects.exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_dbmail_status_sees_a_gate_that_keeps_answering_75():
    env = subprocess_env()
    env.pop("RECIPIENT", None)
    for _ in range(3):
        assert manage("mailgate", input="Subject: x\n\nbody\n", env=env, timeout=60).returncode == 75
    done = manage("dbmail_status", env=env, timeout=60)
    assert done.returncode == 2
    assert "gate: the gate on" in done.stdout.splitlines()[0] and "3 times in a row" in done.stdout
