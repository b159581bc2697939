import io
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dbmail.intake import spool
from dbmail.models import SenderAccount, SpoolFile, SpoolItem, TextOfEmail

from .factories import SenderAccountFactory
from .spoolfiles import age, drop, item, xml

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status


@pytest.fixture
def spool_dir(settings, tmp_path):
    root = tmp_path / "spool"
    root.mkdir()
    settings.DBMAIL_SPOOL_DIR = str(root)
    SenderAccountFactory(address="foo@example.com", display_name="Biblioteka")
    return root


def cron():
    """One `manage.py dbmail_cron` run in this process; returns its output."""
    out = io.StringIO()
    call_command("dbmail_cron", "-v", "2", stdout=out, stderr=out)  # it gives the stop signals back itself
    return out.getvalue()


def listing(root):
    """Every file under the spool, as relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- parsing ---


def test_parse_reads_every_item_with_its_time_in_the_site_time_zone(settings):
    settings.TIME_ZONE = "Europe/Warsaw"
    items = spool.parse(xml(item(), item(address="goo@university.org", topic="Zwrot", content="Treść\nwiersz 2")))
    assert [(i.position, i.address, i.topic) for i in items] == [
        (1, "boo@hisorhermail.com", "Upomnienie"),
        (2, "goo@university.org", "Zwrot"),
    ]
    assert items[1].content == "Treść\nwiersz 2"
    assert timezone.localtime(items[0].fld_time).strftime("%d.%m.%Y %H:%M:%S %Z") == "17.10.2011 00:00:11 CEST"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"<list><item><fld_time>", "not well-formed XML"),
        (b"<items><item/></items>", "root element is <items>"),
        (b"<list><mail/></list>", "element 1 of <list> is <mail>"),
        (b"<list></list>", "has no <item>"),
        (xml(item(time="2011-10-17 00:00:11")), "item 1: <fld_time> '2011-10-17 00:00:11' is not dd.mm.yyyy"),
        (
            b"<list><item><fld_time>17.10.2011 00:00:11</fld_time><fld_sender>a@b.c</fld_sender></item></list>",
            "item 1: missing <fld_address>, <fld_topic>, <fld_content>",
        ),
        (xml(item()).replace(b"<fld_topic>", b"<fld_topic>x</fld_topic><fld_topic>"), "<fld_topic> appears twice"),
    ],
)
def test_parse_explains_what_is_wrong(data, message):
    with pytest.raises(spool.FormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        spool.parse(data)


def test_parse_refuses_entities_and_doctypes():
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE list [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b"<list><item><fld_content>&b;</fld_content></item></list>"
    )
    with pytest.raises(spool.FormatError, match="not well-formed XML"):
        spool.parse(bomb)
    external = b'<?xml version="1.0"?><!DOCTYPE list SYSTEM "file:///etc/passwd"><list/>'
    with pytest.raises(spool.FormatError):
        spool.parse(external)


# --- intake and sending through dbmail_cron ---


def test_a_file_with_several_items_is_sent_and_moved_to_sent(spool_dir, smtp_server):
    drop(spool_dir, "reminders-1.xml", xml(item(), item(address="goo@university.org", content="Zażółć gęślą jaźń")))
    output = cron()
    assert "sent 2, deferred 0, dropped 0" in output
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == ["boo@hisorhermail.com", "goo@university.org"]
    message = smtp_server.to("goo@university.org")[0].message
    assert message["From"] == "Biblioteka <foo@example.com>"
    assert message["Subject"] == "Upomnienie"
    assert message.get_content().strip() == "Zażółć gęślą jaźń"
    assert smtp_server.received[0].mail_from == "foo@example.com"
    assert listing(spool_dir) == ["sent/reminders-1.xml"]
    record = SpoolFile.objects.get()
    assert (record.status, record.location) == ("sent", "sent/reminders-1.xml") and record.settled_at
    assert list(record.items.values_list("position", "email__status")) == [(1, "sent"), (2, "sent")]


def test_a_hidden_or_half_written_file_is_not_read(spool_dir, smtp_server):
    (spool_dir / ".reminders-2.xml.tmp").write_bytes(xml(item())[:40])  # still being written
    cron()
    assert not SpoolFile.objects.exists() and not smtp_server.received
    assert listing(spool_dir) == [".reminders-2.xml.tmp"]
    drop(spool_dir, "reminders-2.xml", xml(item()))  # the producer finishes and renames it
    cron()
    assert len(smtp_server.received) == 1
    assert listing(spool_dir) == ["sent/reminders-2.xml"]


def test_a_file_written_in_place_gets_time_before_it_is_called_malformed(spool_dir, smtp_server):
    path = spool_dir / "in-place.xml"
    path.write_bytes(xml(item())[:60])  # a producer that ignores the convention, caught mid-write
    cron()
    assert listing(spool_dir) == ["in-place.xml"] and not SpoolFile.objects.exists()
    age(path, 1)  # nobody finished it
    cron()
    assert listing(spool_dir) == ["drop/in-place.xml", "drop/in-place.xml.reason"]
    assert "not well-formed XML" in (spool_dir / "drop/in-place.xml.reason").read_text()
    record = SpoolFile.objects.get()
    assert record.status == "dropped" and "not well-formed" in record.reason
    assert not TextOfEmail.objects.exists() and not smtp_server.received


def test_an_unknown_or_inactive_sender_is_dropped_with_that_reason(spool_dir, smtp_server):
    SenderAccountFactory(address="old@example.com", active=False)
    drop(spool_dir, "strangers.xml", xml(item(sender="nobody@example.com"), item(sender="old@example.com")))
    cron()
    assert not smtp_server.received
    reasons = list(TextOfEmail.objects.order_by("pk").values_list("status", "last_error"))
    assert reasons == [
        ("dropped", "fld_sender 'nobody@example.com' is not a configured sender account"),
        ("dropped", "fld_sender 'old@example.com' is not a configured sender account"),
    ]
    assert listing(spool_dir) == ["drop/strangers.xml", "drop/strangers.xml.reason"]
    assert (spool_dir / "drop/strangers.xml.reason").read_text() == (
        "item 1 (boo@hisorhermail.com): fld_sender 'nobody@example.com' is not a configured sender account\n"
        "item 2 (boo@hisorhermail.com): fld_sender 'old@example.com' is not a configured sender account\n"
    )


def test_a_bad_address_drops_the_file_but_the_good_items_go_out(spool_dir, smtp_server):
    drop(spool_dir, "mixed.xml", xml(item(), item(address="not an address")))
    cron()
    assert [m.rcpt_tos for m in smtp_server.received] == [["boo@hisorhermail.com"]]
    assert listing(spool_dir) == ["drop/mixed.xml", "drop/mixed.xml.reason"]
    reason = (spool_dir / "drop/mixed.xml.reason").read_text()
    assert reason == "item 2 (not an address): invalid address 'not an address'\n"


def test_451_then_250_waits_in_defer_an_hour_then_goes_to_sent(spool_dir, smtp_server):
    smtp_server.script("boo@hisorhermail.com", "451 4.3.0 try later", "250")
    drop(spool_dir, "late.xml", xml(item(), item(address="goo@university.org")))
    before = timezone.now()
    cron()
    assert listing(spool_dir) == ["defer/late.xml"]
    assert SpoolFile.objects.get().status == "deferred"
    late = TextOfEmail.objects.get(to_address="boo@hisorhermail.com")
    assert late.status == Status.DEFERRED and late.attempts == 1
    # No sooner than DBMAIL_SPOOL_RETRY_SECONDS (an hour), not the outbox's 5-minute first backoff.
    assert before + timedelta(seconds=3600) <= late.next_attempt_at <= timezone.now() + timedelta(seconds=3600)
    cron()  # within the hour: not tried again
    assert late.events.count() == 1 and listing(spool_dir) == ["defer/late.xml"]
    TextOfEmail.objects.filter(pk=late.pk).update(next_attempt_at=timezone.now())  # the hour has passed
    cron()
    assert listing(spool_dir) == ["sent/late.xml"]
    assert [m.rcpt_tos[0] for m in smtp_server.received] == ["goo@university.org", "boo@hisorhermail.com"]


def test_550_goes_to_drop_with_the_servers_answer(spool_dir, smtp_server):
    smtp_server.script("boo@hisorhermail.com", "550 5.1.1 no such user")
    drop(spool_dir, "refused.xml", xml(item()))
    cron()
    assert listing(spool_dir) == ["drop/refused.xml", "drop/refused.xml.reason"]
    assert (spool_dir / "drop/refused.xml.reason").read_text() == "item 1 (boo@hisorhermail.com): 5.1.1 no such user\n"
    assert TextOfEmail.objects.get().status == Status.DROPPED


def test_too_many_failed_attempts_drop_the_file(spool_dir, smtp_server, settings):
    settings.DBMAIL_SPOOL_MAX_ATTEMPTS = 2
    smtp_server.script("boo@hisorhermail.com", "451 4.3.0 try later")
    drop(spool_dir, "never.xml", xml(item()))
    cron()
    assert listing(spool_dir) == ["defer/never.xml"]
    TextOfEmail.objects.update(next_attempt_at=timezone.now())
    cron()
    assert listing(spool_dir) == ["drop/never.xml", "drop/never.xml.reason"]
    assert "too many attempts (2)" in (spool_dir / "drop/never.xml.reason").read_text()


def test_files_in_sent_and_drop_are_removed_after_the_keep_days(spool_dir, smtp_server, settings):
    drop(spool_dir, "ok.xml", xml(item()))
    drop(spool_dir, "bad.xml", xml(item(address="bad")))
    cron()
    assert listing(spool_dir) == ["drop/bad.xml", "drop/bad.xml.reason", "sent/ok.xml"]
    (spool_dir / "defer").mkdir(exist_ok=True)
    waiting = [drop(spool_dir / "defer", "waiting.xml", b"<list/>"), drop(spool_dir, "new.xml", b"x")]
    for path in waiting:  # old, but without an outcome: never removed
        age(path, 30)
    age(spool_dir / "sent/ok.xml", 6)
    for name in ("drop/bad.xml", "drop/bad.xml.reason"):
        age(spool_dir / name, 8)
    SpoolFile.objects.filter(name="bad.xml").update(settled_at=timezone.now() - timedelta(days=8))
    cron()
    assert "sent/ok.xml" in listing(spool_dir) and "defer/waiting.xml" in listing(spool_dir)
    assert not any(p.startswith("drop/bad") for p in listing(spool_dir))
    assert "ok.xml" in SpoolFile.objects.values_list("name", flat=True)
    assert "bad.xml" not in SpoolFile.objects.values_list("name", flat=True)
    assert TextOfEmail.objects.filter(to_address="bad").exists()  # the outbox keeps its own log
    settings.DBMAIL_SPOOL_KEEP_DAYS = 5
    cron()
    assert "sent/ok.xml" not in listing(spool_dir)


def test_a_crash_after_the_commit_never_imports_twice(spool_dir, smtp_server, monkeypatch):
    drop(spool_dir, "once.xml", xml(item(), item(address="goo@university.org")))

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    with monkeypatch.context() as m:
        m.setattr(spool, "_put", crash)  # dies after sending, before the file is moved
        with pytest.raises(RuntimeError):
            cron()
    assert listing(spool_dir) == ["once.xml"]
    assert TextOfEmail.objects.count() == 2
    cron()
    cron()
    assert TextOfEmail.objects.count() == 2 and SpoolFile.objects.count() == 1
    assert len(smtp_server.received) == 2
    assert listing(spool_dir) == ["sent/once.xml"]


def test_a_crash_during_intake_imports_nothing_and_the_file_stays(spool_dir, smtp_server, monkeypatch):
    drop(spool_dir, "whole.xml", xml(item(), item(address="goo@university.org")))
    real = SpoolItem.objects.bulk_create

    with monkeypatch.context() as m:
        m.setattr(SpoolItem.objects, "bulk_create", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk")))
        with pytest.raises(RuntimeError):
            cron()
    assert not SpoolFile.objects.exists() and not TextOfEmail.objects.exists()
    assert listing(spool_dir) == ["whole.xml"]
    assert SpoolItem.objects.bulk_create == real
    cron()
    assert len(smtp_server.received) == 2 and listing(spool_dir) == ["sent/whole.xml"]


def test_a_crash_between_the_move_and_its_record_is_repaired(spool_dir, smtp_server, monkeypatch):
    drop(spool_dir, "moved.xml", xml(item()))
    real_save = SpoolFile.save

    def save_then_die(self, *args, **kwargs):
        if self.status == "sent":
            raise RuntimeError("killed")
        return real_save(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(SpoolFile, "save", save_then_die)
        with pytest.raises(RuntimeError):
            cron()
    assert listing(spool_dir) == ["sent/moved.xml"] and SpoolFile.objects.get().status == "queued"
    cron()
    record = SpoolFile.objects.get()
    assert (record.status, record.location) == ("sent", "sent/moved.xml")
    assert len(smtp_server.received) == 1


def test_a_second_copy_of_a_sent_file_is_not_sent_again(spool_dir, smtp_server):
    data = xml(item())
    drop(spool_dir, "copy.xml", data)
    cron()
    drop(spool_dir, "copy.xml", data)
    cron()
    assert len(smtp_server.received) == 1
    assert listing(spool_dir) == ["drop/copy.xml", "drop/copy.xml.reason", "sent/copy.xml"]
    assert "the same file (name and content) was taken in" in (spool_dir / "drop/copy.xml.reason").read_text()


def test_a_new_file_with_an_old_name_is_sent_and_kept_beside_the_old_one(spool_dir, smtp_server):
    drop(spool_dir, "daily.xml", xml(item(time="01.01.2026 08:00:00")))
    cron()
    drop(spool_dir, "daily.xml", xml(item(time="02.01.2026 08:00:00")))
    cron()
    assert len(smtp_server.received) == 2
    assert listing(spool_dir) == ["sent/daily.xml", "sent/daily.xml.1"]


def test_a_missing_spool_directory_fails_the_run_clearly(settings, tmp_path, smtp_server):
    settings.DBMAIL_SPOOL_DIR = str(tmp_path / "nowhere")
    with pytest.raises(CommandError, match=r"the spool directory .*nowhere \(DBMAIL_SPOOL_DIR\) does not exist"):
        cron()


def test_without_a_spool_directory_the_spool_steps_do_nothing(settings, smtp_server):
    settings.DBMAIL_SPOOL_DIR = ""
    assert spool.intake() == spool.IntakeResult()
    assert spool.settle() == spool.SettleResult()


def test_spool_mail_shows_in_dbmail_status_like_any_other(spool_dir, smtp_server):
    from dbmail.ops import dkimkeys

    dkimkeys.generate("example.com", algorithm="ed25519")  # signed mail: no DKIM warning changes the exit status
    smtp_server.script("boo@hisorhermail.com", "451 4.3.0 try later")
    drop(spool_dir, "status.xml", xml(item(), item(address="goo@university.org")))
    cron()
    out = io.StringIO()
    call_command("dbmail_status", stdout=out)
    assert "deferred            1" in out.getvalue() and "sent                1" in out.getvalue()


def test_the_sender_account_lookup_ignores_case(spool_dir, smtp_server):
    SenderAccount.objects.filter(address="foo@example.com").update(address="Foo@Example.com")
    drop(spool_dir, "case.xml", xml(item(sender="FOO@example.COM")))
    cron()
    assert len(smtp_server.received) == 1


def test_an_unreadable_file_is_reported_and_the_others_still_go(spool_dir, smtp_server, monkeypatch):
    drop(spool_dir, "locked.xml", xml(item(address="goo@university.org")))
    drop(spool_dir, "open.xml", xml(item()))
    real = Path.read_bytes

    def read_bytes(path):  # the suite runs as root, where file permissions cannot refuse a read
        if path.name == "locked.xml":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    with monkeypatch.context() as m:
        m.setattr(Path, "read_bytes", read_bytes)
        result = spool.intake()
    assert result.files == 1
    assert result.errors == [f"locked.xml: [Errno 13] Permission denied: '{spool_dir}/locked.xml'"]
    cron()  # readable again
    assert len(smtp_server.received) == 2


def test_a_file_another_run_just_moved_is_not_moved_again(spool_dir, smtp_server):
    smtp_server.script("boo@hisorhermail.com", "451 4.3.0 try later")
    drop(spool_dir, "raced.xml", xml(item()))
    cron()
    record = SpoolFile.objects.get()
    # A second host that counted before the first one moved the file gets the lock afterwards.
    assert spool._settle_one(spool_dir, record.pk, timezone.now()) is None
    assert listing(spool_dir) == ["defer/raced.xml"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_hosts_on_one_spool_take_in_and_send_each_item_once(spool_dir, smtp_server):
    import subprocess
    import sys

    from .conftest import ROOT, subprocess_env

    for n in range(20):
        drop(spool_dir, f"batch-{n:02}.xml", xml(*(item(address=f"r{n}-{k}@example.net") for k in range(3))))
    smtp_server.delay = 0.02  # keeps both runs busy at once
    env = subprocess_env(smtp=smtp_server, DBMAIL_SPOOL_DIR=str(spool_dir))
    command = [sys.executable, str(ROOT / "manage.py"), "dbmail_cron", "--batch-size", "5"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
    addresses = [m.rcpt_tos[0] for m in smtp_server.received]
    assert len(addresses) == 60 and len(set(addresses)) == 60
    assert SpoolFile.objects.count() == 20 and TextOfEmail.objects.count() == 60
    assert listing(spool_dir) == [f"sent/batch-{n:02}.xml" for n in range(20)]


def test_cycle_takes_in_before_the_send_and_settles_after_it(spool_dir, smtp_server):
    from dbmail.send.loop import send_due

    drop(spool_dir, "cycle-1.xml", xml(item()))
    seen = []

    def send():
        seen.append(("send", listing(spool_dir), TextOfEmail.objects.filter(status=Status.QUEUED).count()))
        return send_due()

    taken, sent, settled = spool.cycle(send, on_intake=lambda t: seen.append(("intake", t.files, t.emails)))
    assert seen == [("intake", 1, 1), ("send", ["cycle-1.xml"], 1)]  # taken in, not yet moved, when sending
    assert (taken.files, sent.sent, settled.sent) == (1, 1, 1)
    assert listing(spool_dir) == ["sent/cycle-1.xml"]
