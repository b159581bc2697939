import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from dbmail.models import LogCursor, TextOfEmail, TrackingQueueItem
from dbmail.send.loop import send_due
from dbmail.track.consume import consume
from dbmail.track.logfollow import Follower, parse_exim, parse_postfix
from dbmail.track.queue import QueueUnavailable

from .conftest import ROOT, subprocess_env
from .factories import TextOfEmailFactory

Status = TextOfEmail.Status
NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def database_queue(settings):
    settings.TRACKING_QUEUE_URL = ""
    settings.TIME_ZONE = "UTC"


def postfix(qid, text, stamp="Nov 22 19:58:01", prog="postfix/smtp[4242]"):
    return f"{stamp} mx1 {prog}: {qid}: {text}\n"


def exim(qid, text, stamp="2026-11-22 19:58:01"):
    return f"{stamp} {qid} {text}\n"


def write(path, *lines, mode="a"):
    with open(path, mode) as log:
        log.write("".join(lines))


def queued_events():
    return [row.payload for row in TrackingQueueItem.objects.order_by("id")]


# --- Postfix lines ---


def test_postfix_delivery_lines():
    sent = parse_postfix(
        postfix(
            "4BC2D3F1A",
            "to=<ann@example.net>, relay=mx.example.net[192.0.2.1]:25, delay=1.2, "
            "delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 99XY)",
        ),
        NOW,
    )
    assert (sent.kind, sent.queue_id, sent.recipient, sent.event) == (
        "delivery",
        "4BC2D3F1A",
        "ann@example.net",
        "delivered",
    )
    assert sent.diagnostic == "2.0.0 250 2.0.0 Ok: queued as 99XY"
    assert sent.when == datetime(2026, 11, 22, 19, 58, 1, tzinfo=UTC)
    bounced = parse_postfix(
        postfix(
            "4BC2D3F1A",
            "to=<bob@example.net>, relay=mx.example.net[192.0.2.1]:25, dsn=5.1.1, status=bounced "
            "(host mx.example.net[192.0.2.1] said: 550 5.1.1 <bob@example.net>: no such user (in reply to RCPT TO command))",
        ),
        NOW,
    )
    assert (bounced.event, bounced.bounce_type) == ("bounced", "hard")
    assert "no such user" in bounced.diagnostic
    deferred = parse_postfix(
        postfix(
            "4BC2D3F1A",
            "to=<c@example.net>, relay=none, delay=30, dsn=4.4.1, status=deferred "
            "(connect to mx.example.net[192.0.2.1]:25: Connection refused)",
        ),
        NOW,
    )
    assert deferred.event == "deferred" and deferred.bounce_type is None
    expired = parse_postfix(
        postfix("4BC2D3F1A", "from=<o@example.org>, status=expired, returned to sender", prog="postfix/qmgr[1]"), NOW
    )
    assert expired is None  # no recipient: the per-recipient bounced line carries the news


def test_postfix_bookkeeping_and_other_lines():
    mid = parse_postfix(postfix("4BC2D3F1A", "message-id=<abc@example.org>", prog="postfix/cleanup[77]"), NOW)
    assert (mid.kind, mid.message_id) == ("message-id", "<abc@example.org>")
    assert parse_postfix(postfix("4BC2D3F1A", "removed", prog="postfix/qmgr[5]"), NOW).kind == "done"
    assert parse_postfix(postfix("NOQUEUE", "reject: RCPT from x[192.0.2.9]: 554 5.7.1 denied"), NOW) is None
    assert parse_postfix("Nov 22 19:58:01 mx1 dovecot[3]: 4BC2D3F1A: to=<a@b>, status=sent (ok)\n", NOW) is None
    assert parse_postfix("garbage\n", NOW) is None
    # RFC 3339 stamps (rsyslog's high-precision format) and last year's lines around New Year.
    iso = parse_postfix(
        "2026-11-22T19:58:01.123456+01:00 mx1 postfix/smtp[1]: 4BC2D3F1A: to=<a@b.c>, dsn=2.0.0, status=sent (ok)", NOW
    )
    assert iso.when == datetime(2026, 11, 22, 18, 58, 1, 123456, tzinfo=UTC)
    december = parse_postfix(
        postfix("4BC2D3F1A", "to=<a@b.c>, dsn=2.0.0, status=sent (ok)", stamp="Dec 31 23:59:59"),
        datetime(2027, 1, 1, 0, 1, tzinfo=UTC),
    )
    assert december.when.year == 2026


# --- Exim lines ---


def test_exim_lines():
    qid = "1tE5pQ-000Abc-Xy"
    arrival = parse_exim(
        exim(qid, "<= office@example.org H=localhost [127.0.0.1] P=esmtp S=1234 id=abc@example.org"), NOW
    )
    assert (arrival.kind, arrival.message_id) == ("message-id", "abc@example.org")
    delivered = parse_exim(
        exim(qid, 'ann@example.net R=dnslookup T=remote_smtp H=mx.example.net [192.0.2.1] C="250 2.0.0 OK id=77"'), NOW
    )
    assert delivered is None  # no flag: not a delivery line
    delivered = parse_exim(
        exim(qid, '=> ann@example.net R=dnslookup T=remote_smtp H=mx.example.net [192.0.2.1] C="250 2.0.0 OK id=77"'),
        NOW,
    )
    assert (delivered.event, delivered.recipient, delivered.diagnostic) == (
        "delivered",
        "ann@example.net",
        "250 2.0.0 OK id=77",
    )
    more = parse_exim(exim(qid, "-> bob@example.net R=dnslookup T=remote_smtp H=mx.example.net [192.0.2.1]"), NOW)
    assert more.event == "delivered"
    failed = parse_exim(
        exim(
            qid,
            "** carl@example.net R=dnslookup T=remote_smtp H=mx.example.net [192.0.2.1]: "
            "SMTP error from remote mail server after RCPT TO:<carl@example.net>: 550 5.1.1 User unknown",
        ),
        NOW,
    )
    assert (failed.event, failed.bounce_type, failed.recipient) == ("bounced", "hard", "carl@example.net")
    assert failed.diagnostic.endswith("550 5.1.1 User unknown")
    gave_up = parse_exim(exim(qid, "** dan@example.net: retry timeout exceeded"), NOW)
    assert gave_up.bounce_type == "soft"
    deferred = parse_exim(
        exim(
            qid,
            "== eve@example.net R=dnslookup T=remote_smtp defer (-44) H=mx.example.net [192.0.2.1]: "
            "SMTP error from remote mail server after RCPT TO:<eve@example.net>: 451 4.7.1 Greylisted",
        ),
        NOW,
    )
    assert deferred.event == "deferred" and "Greylisted" in deferred.diagnostic
    assert parse_exim(exim(qid, "Completed"), NOW).kind == "done"
    zoned = parse_exim(exim("1tE5pQ-0000000Abcd-XyZ1", "Completed", stamp="2026-11-22 20:58:01.250 +0100"), NOW)
    assert zoned.when == datetime(2026, 11, 22, 19, 58, 1, 250000, tzinfo=UTC)
    assert parse_exim("2026-11-22 19:58:01 Start queue run: pid=1\n", NOW) is None


# --- Following a log ---


@pytest.mark.django_db
def test_postfix_lines_become_events_for_our_emails_by_message_id_and_by_queue_id(smtp_server, tmp_path):
    by_id, by_queue = TextOfEmailFactory(), TextOfEmailFactory()
    assert send_due().sent == 2  # the server answered "250 2.0.0 Ok: queued as Q00000001" and "...Q00000002"
    queue_ids = {e.to_address: e.events.get().text.rsplit(" ", 1)[1] for e in (by_id, by_queue)}
    log = tmp_path / "mail.log"
    write(
        log,
        postfix(queue_ids[by_id.to_address], f"message-id={by_id.message_id}", prog="postfix/cleanup[7]"),
        postfix("F00D1", "message-id=<someone-else@example.com>", prog="postfix/cleanup[7]"),
        postfix(
            queue_ids[by_id.to_address],
            f"to=<{by_id.to_address}>, relay=mx[192.0.2.1]:25, dsn=2.0.0, status=sent (250 ok)",
        ),
        # No message-id line for this one (the follower started later): the queue id finds it.
        postfix(
            queue_ids[by_queue.to_address],
            f"to=<{by_queue.to_address}>, relay=mx[192.0.2.1]:25, dsn=5.1.1, "
            "status=bounced (host mx said: 550 5.1.1 no such user)",
        ),
        postfix("F00D1", "to=<x@example.com>, relay=mx[192.0.2.1]:25, dsn=2.0.0, status=sent (250 ok)"),
        postfix("BEEF2", "to=<y@example.com>, relay=mx[192.0.2.1]:25, dsn=2.0.0, status=sent (250 ok)"),
    )
    follower = Follower(str(log), "postfix")
    assert follower.poll() == 2 and follower.skipped == 2
    assert follower.poll() == 0
    run = consume()
    assert run.totals.applied == 2 and run.totals.unmatched == 0
    by_id.refresh_from_db(), by_queue.refresh_from_db()
    assert (by_id.status, by_queue.status) == (Status.DELIVERED, Status.BOUNCED)
    assert "queue id" in by_queue.events.filter(kind="tracking").get().text


@pytest.mark.django_db
def test_exim_lines_become_events(tmp_path):
    email = TextOfEmailFactory(status=Status.SENT)
    qid = "1tE5pQ-000Abc-Xy"
    log = tmp_path / "mainlog"
    write(
        log,
        exim(qid, f"<= office@example.org H=localhost [127.0.0.1] P=esmtp S=999 id={email.message_id.strip('<>')}"),
        exim(qid, f"== {email.to_address} R=dnslookup T=remote_smtp defer (-44): 451 4.7.1 Greylisted"),
        exim(qid, f'=> {email.to_address} R=dnslookup T=remote_smtp H=mx [192.0.2.1] C="250 OK"'),
        exim(qid, "Completed"),
    )
    assert Follower(str(log), "exim").poll() == 2
    consume()
    email.refresh_from_db()
    assert email.status == Status.DELIVERED
    assert [e.outcome for e in email.events.order_by("at", "id")] == ["sent", "delivered"]


@pytest.mark.django_db
def test_rotation_partial_lines_restarts_and_truncation(tmp_path):
    emails = TextOfEmailFactory.create_batch(5, status=Status.SENT)

    def lines(i):
        email = emails[i]
        qid = f"ABC{i:03d}"
        return [
            postfix(qid, f"message-id={email.message_id}", prog="postfix/cleanup[7]"),
            postfix(qid, f"to=<{email.to_address}>, relay=mx[192.0.2.1]:25, dsn=2.0.0, status=sent (250 ok)"),
        ]

    log = tmp_path / "mail.log"
    write(log, *lines(0))
    follower = Follower(str(log), "postfix")
    assert follower.poll() == 1
    # Half a line is left for the next look.
    whole = "".join(lines(1))
    write(log, whole[:-20])
    assert follower.poll() == 0
    write(log, whole[-20:])
    # logrotate renames the file; the MTA writes a last line to the old one, then opens a new one.
    os.rename(log, tmp_path / "mail.log.1")
    write(tmp_path / "mail.log.1", *lines(2))
    write(log, *lines(3), mode="w")
    assert follower.poll() == 2  # the rest of the old file first
    assert follower.poll() == 0  # end of the old file: notice the new one
    assert follower.poll() == 1
    # A restarted follower resumes where the cursor says, publishing nothing twice.
    cursor = LogCursor.objects.get()
    assert cursor.path == str(log) and cursor.offset == log.stat().st_size
    restarted = Follower(str(log), "postfix")
    assert restarted.poll() == 0
    # copytruncate: same file, cut to nothing, written again.
    with open(log, "w"):
        pass
    write(log, *lines(4))
    assert restarted.poll() == 1  # read from the start, though the file is as long as before
    assert consume().totals.applied == 5
    assert set(TextOfEmail.objects.values_list("status", flat=True)) == {Status.DELIVERED}


@pytest.mark.django_db
def test_when_the_queue_is_down_the_lines_are_read_again(tmp_path, settings):
    email = TextOfEmailFactory(status=Status.SENT)
    log = tmp_path / "mail.log"
    write(
        log,
        postfix("ABC12", f"message-id={email.message_id}", prog="postfix/cleanup[1]"),
        postfix("ABC12", f"to=<{email.to_address}>, dsn=2.0.0, status=sent (250 ok)"),
    )
    follower = Follower(str(log), "postfix")
    settings.TRACKING_QUEUE_URL = "amqp://guest:guest@127.0.0.1:1/%2F"  # nothing listens there
    with pytest.raises(QueueUnavailable):
        follower.poll()
    settings.TRACKING_QUEUE_URL = ""
    assert follower.poll() == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_command_follows_a_log_across_rotation(tmp_path):
    first, second = TextOfEmailFactory(status=Status.SENT), TextOfEmailFactory(status=Status.SENT)
    log = tmp_path / "mail.log"
    write(log, "")
    child = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "dbmail_track",
            "--follow-log",
            str(log),
            "--format",
            "postfix",
            "--poll",
            "0.1",
        ],
        env=subprocess_env(TRACKING_QUEUE_URL=""),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait_for(n):
        deadline = time.monotonic() + 30
        while TrackingQueueItem.objects.count() < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return TrackingQueueItem.objects.count()

    try:
        write(
            log,
            postfix("AAAA1", f"message-id={first.message_id}", prog="postfix/cleanup[1]"),
            postfix("AAAA1", f"to=<{first.to_address}>, dsn=2.0.0, status=sent (250 ok)"),
        )
        assert wait_for(1) == 1
        os.rename(log, tmp_path / "mail.log.1")
        write(
            log,
            postfix("BBBB2", f"message-id={second.message_id}", prog="postfix/cleanup[1]"),
            postfix("BBBB2", f"to=<{second.to_address}>, dsn=5.1.1, status=bounced (550 5.1.1 unknown)"),
            mode="w",
        )
        assert wait_for(2) == 2
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    consume()
    first.refresh_from_db(), second.refresh_from_db()
    assert (first.status, second.status) == (Status.DELIVERED, Status.BOUNCED)
    assert [e["event"] for e in queued_events()] == []  # consumed
    from dbmail.models import CronHeartbeat
    from dbmail.ops import health

    beat = CronHeartbeat.objects.get(command=health.FOLLOWER)  # dbmail_status sees the follower alive
    assert beat.last_success_at and beat.last_summary["path"] == str(log) and beat.last_error == ""
    assert next(f for f in health.run().findings if f.check == "log follower").state == health.OK
