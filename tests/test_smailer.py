import hashlib
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dbmail.intake import smailer, spool, tablequeue
from dbmail.models import SpoolFile, TextOfEmail

from .factories import SenderAccountFactory, TextOfEmailFactory
from .queuetables import insert, row, statuses
from .spoolfiles import age, drop, item, xml

pytestmark = pytest.mark.django_db
LINE = re.compile(r"^\d{2}\.\d{2}\.\d{10}_[0-9A-F]{16}: \(\S+ => \S+\)$")


def smailer_cmd(*args):
    out = io.StringIO()
    call_command("smailer", *args, stdout=out, stderr=out)
    return out.getvalue().splitlines()


def qid(email):
    return hashlib.sha256(email.message_id.encode()).hexdigest()[:16].upper()


@pytest.fixture
def foo():
    return SenderAccountFactory(address="foo@example.com")


@pytest.fixture
def spooled(settings, tmp_path, foo):
    """The seed's three reminders, taken in from a spool file."""
    settings.DBMAIL_SPOOL_DIR = str(tmp_path)
    drop(
        tmp_path,
        "seed.xml",
        xml(*(item(address=a) for a in ("boo@hisorhermail.com", "goo@university.org", "zoo@provider.net"))),
    )
    spool.intake()
    return list(TextOfEmail.objects.order_by("pk"))


def test_queue_prints_the_seeds_lines_exactly(spooled):
    assert smailer_cmd("queue", "foo@example.com") == [
        f"17.10.2011000011_{qid(spooled[0])}: (foo@example.com => boo@hisorhermail.com)",
        f"17.10.2011000011_{qid(spooled[1])}: (foo@example.com => goo@university.org)",
        f"17.10.2011000011_{qid(spooled[2])}: (foo@example.com => zoo@provider.net)",
    ]


def test_the_queue_id_is_stable_and_sixteen_hex_digits(spooled):
    first, again = smailer_cmd("queue"), smailer_cmd("queue")
    assert first == again and all(LINE.match(line) for line in first)
    assert len({line.split("_")[1].split(":")[0] for line in first}) == 3


def test_other_mail_shows_its_creation_time_in_the_site_time_zone(settings, foo):
    settings.TIME_ZONE = "Europe/Warsaw"
    email = TextOfEmailFactory(
        account=foo, to_address="ann@example.net", created_at=datetime(2026, 1, 5, 23, 30, 15, tzinfo=UTC)
    )
    assert smailer_cmd("queue") == [f"06.01.2026003015_{qid(email)}: (foo@example.com => ann@example.net)"]


def test_queue_lists_waiting_mail_of_one_sender_or_of_all(foo):
    bar = SenderAccountFactory(address="bar@example.com")
    queued = TextOfEmailFactory(account=foo, to_address="a@example.net")
    deferred = TextOfEmailFactory(
        account=bar, to_address="b@example.net", status="deferred", next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    for status in ("sent", "dropped", "sending", "cancelled"):
        TextOfEmailFactory(account=foo, status=status)
    site = TextOfEmailFactory(account=None, envelope_sender="noreply@example.org", to_address="c@example.net")
    assert [line.split(" => ")[1] for line in smailer_cmd("queue", "foo@example.com")] == ["a@example.net)"]
    assert [line.split(" => ")[1] for line in smailer_cmd("queue", "BAR@example.com")] == ["b@example.net)"]
    everyone = smailer_cmd("queue")
    assert everyone == smailer_cmd("queue", "@")
    assert [line.split(": ")[1] for line in everyone] == [
        "(foo@example.com => a@example.net)",
        "(bar@example.com => b@example.net)",
        "(noreply@example.org => c@example.net)",
    ]
    assert smailer_cmd("queue", "noreply@example.org") == [smailer.line(site)]
    assert queued and deferred


def test_an_unknown_sender_fails_clearly(foo):
    with pytest.raises(CommandError, match="'who@example.com' is not a sender account"):
        smailer_cmd("queue", "who@example.com")


def test_send_sends_that_senders_waiting_mail_now_whatever_the_schedule(foo, smtp_server):
    bar = SenderAccountFactory(address="bar@example.com")
    later = timezone.now() + timedelta(hours=5)
    deferred = TextOfEmailFactory(
        account=foo, to_address="a@example.net", status="deferred", attempts=3, next_attempt_at=later
    )
    queued = TextOfEmailFactory(account=foo, to_address="b@example.net", next_attempt_at=later)
    other = TextOfEmailFactory(account=bar, to_address="c@example.net")
    smtp_server.script("b@example.net", "451 4.3.0 busy")
    lines = smailer_cmd("send", "foo@example.com")
    assert lines == [
        f"{smailer.line(deferred)} sent 250: 2.0.0 Ok: queued as Q00000001",
        f"{smailer.line(queued)} deferred 451: 4.3.0 busy",
        "sent 1, deferred 1, dropped 0",
    ]
    assert [m.rcpt_tos for m in smtp_server.received] == [["a@example.net"]]
    assert len(smtp_server.refused) == 1  # tried once, not in a loop
    queued.refresh_from_db()
    other.refresh_from_db()
    assert (queued.status, queued.attempts) == ("deferred", 1)
    assert other.status == "queued"  # another sender's mail is left alone


def test_send_for_everyone_takes_in_the_spool_and_settles_it(spooled, smtp_server):
    lines = smailer_cmd("send", "@")
    assert len(smtp_server.received) == 3
    assert lines[-2:] == ["sent 3, deferred 0, dropped 0", "spool: 1 file(s) to sent/, 0 to defer/, 0 to drop/"]
    assert SpoolFile.objects.get().location == "sent/seed.xml"
    assert smailer_cmd("queue") == []


def test_send_picks_up_a_new_spool_file_itself(settings, tmp_path, foo, smtp_server):
    settings.DBMAIL_SPOOL_DIR = str(tmp_path)
    drop(tmp_path, "fresh.xml", xml(item()))
    lines = smailer_cmd("send")
    assert lines[0] == "spool: took in 1 file(s), 1 email(s)"
    assert (tmp_path / "sent/fresh.xml").exists()


def test_send_fails_when_the_server_cannot_be_reached(foo, settings):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1  # nothing listens
    email = TextOfEmailFactory(account=foo)
    with pytest.raises(CommandError, match="cannot reach the SMTP server"):
        smailer_cmd("send")
    email.refresh_from_db()
    assert email.status == "deferred"


def test_quiet_send_prints_nothing(foo, smtp_server):
    TextOfEmailFactory(account=foo)
    assert smailer_cmd("send", "-v", "0") == []
    assert len(smtp_server.received) == 1


# --- `queue` sees everything waiting: the outbox, the queue table, and spool files not taken in yet ---


def file_item_id(name, position):
    return hashlib.sha256(f"spool:{name}:{position}".encode()).hexdigest()[:16].upper()


def row_id(pk):
    return hashlib.sha256(f"table:tbl_mails:{pk}".encode()).hexdigest()[:16].upper()


def test_queue_lists_rows_and_files_not_taken_in_yet_and_takes_nothing(settings, tmp_path, foo, own_table):
    SenderAccountFactory(address="bar@example.com")
    settings.DBMAIL_SPOOL_DIR = str(tmp_path)
    email = TextOfEmailFactory(
        account=foo, to_address="ann@example.net", created_at=datetime(2026, 1, 5, 8, 0, 1, tzinfo=UTC)
    )
    drop(tmp_path, "a.xml", xml(item(), item(address="goo@university.org", sender="BAR@example.com")))
    drop(tmp_path, "broken.xml", b"<list><item>")  # dropped when taken in; nothing to list
    age(tmp_path / "broken.xml", 1)
    (pk,) = insert([row("zoo@provider.net", fld_time=datetime(2011, 10, 17, 0, 0, 12, tzinfo=UTC))])
    everything = [
        f"05.01.2026080001_{qid(email)}: (foo@example.com => ann@example.net)",
        f"17.10.2011000012_{row_id(pk)}: (foo@example.com => zoo@provider.net)",
        f"17.10.2011000011_{file_item_id('a.xml', 1)}: (foo@example.com => boo@hisorhermail.com)",
        f"17.10.2011000011_{file_item_id('a.xml', 2)}: (BAR@example.com => goo@university.org)",
    ]
    assert smailer_cmd("queue") == everything == smailer_cmd("queue", "@")
    assert smailer_cmd("queue", "foo@example.com") == everything[:3]
    assert smailer_cmd("queue", "bar@example.com") == everything[3:]
    # Read only: nothing was taken in, moved or marked.
    assert not SpoolFile.objects.exists() and TextOfEmail.objects.count() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.xml", "broken.xml"]
    assert statuses() == {pk: ("", "")}


def test_once_taken_in_each_mail_is_listed_once_by_its_emails_queue_id(settings, tmp_path, foo, own_table):
    settings.DBMAIL_SPOOL_DIR = str(tmp_path)
    drop(tmp_path, "a.xml", xml(item()))
    insert([row("zoo@provider.net")])
    before = smailer_cmd("queue")
    spool.intake()
    tablequeue.take()
    after = smailer_cmd("queue")
    emails = TextOfEmail.objects.order_by("pk")
    assert after == [smailer.line(e) for e in emails] and len(after) == len(before) == 2
    assert [line.split(": ")[1] for line in after] == sorted(line.split(": ")[1] for line in before)
