"""Discovery and polling against a real Dovecot (tests/dovecot.py)."""

import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from mailgate.mailboxes import imap
from mailgate.models import InboundMessage, MailFolder, Message

from .conftest import ROOT, subprocess_env
from .factories import MailFolderFactory
from .mailboxes import account_on, plain

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def inbox(dovecot, imap_user, **kwargs):
    account = account_on(dovecot, imap_user)
    return MailFolderFactory(account=account, name=kwargs.pop("name", "INBOX"), **kwargs)


def poll(folder):
    folder.refresh_from_db()
    return imap.poll_folders([folder]).folders[0]


def test_discovery_stores_selectable_folders_disabled(dovecot, imap_user):
    login, _ = imap_user
    dovecot.append(login, "INBOX", plain())
    dovecot.append(login, "Lists/physics", plain())
    account = account_on(dovecot, imap_user)

    added = imap.discover(account)

    assert sorted(added) == ["INBOX", "Lists/physics"]  # "Lists" itself is \Noselect
    assert not account.folders.filter(enabled=True).exists()
    account.refresh_from_db()
    assert account.discovered_at is not None

    dovecot.append(login, "Archive", plain())
    with dovecot.client(login) as client:
        client.delete_folder("Lists/physics")
    assert imap.discover(account) == ["Archive"]
    gone = account.folders.get(name="Lists/physics")
    assert gone.exists_on_server is False
    assert account.folders.count() == 3


def test_wrong_password_is_a_clear_error_and_noted_on_creation(dovecot, imap_user):
    account = account_on(dovecot, (imap_user[0], "wrong"))
    with pytest.raises(imap.MailboxError, match=account.address):
        imap.discover(account)
    assert imap.discover_quietly(account) == []
    account.refresh_from_db()
    assert "cannot log in" in account.last_error


def test_poll_stores_new_messages_once(dovecot, imap_user):
    login, _ = imap_user
    raws = [plain(f"Message {n}") for n in range(3)]
    for raw in raws:
        dovecot.append(login, "INBOX", raw)
    folder = inbox(dovecot, imap_user)

    result = poll(folder)

    assert (result.stored, result.error) == (3, "")
    messages = list(Message.objects.filter(folder=folder).order_by("uid"))
    assert [bytes(m.inbound.raw) for m in messages] == raws
    assert {m.status for m in messages} == {Message.Status.RECEIVED}
    assert [m.subject for m in messages] == ["Message 0", "Message 1", "Message 2"]
    assert {m.inbound.status for m in messages} == {InboundMessage.Status.RECEIVED}
    assert dovecot.uids(login, "INBOX") == [1, 2, 3]  # not deleted: the folder does not say so

    assert poll(folder).stored == 0
    dovecot.append(login, "INBOX", plain("Later"))
    assert poll(folder).stored == 1
    assert Message.objects.filter(folder=folder).count() == 4
    folder.refresh_from_db()
    assert (folder.last_uid, folder.lease_until) == (4, None)


def test_only_due_folders_are_polled(dovecot, imap_user):
    folder = inbox(dovecot, imap_user)
    assert folder in imap.due_folders()
    imap.poll_due()
    folder.refresh_from_db()
    assert folder.last_polled_at is not None
    assert folder not in imap.due_folders()  # the default 30 seconds have not passed
    assert folder in imap.due_folders(now=timezone.now() + timedelta(seconds=31))

    folder.options = {"after_read_timeout": 0}
    folder.save()
    assert folder in imap.due_folders()


def test_options_resolve_folder_account_profile_default(settings):
    folder = MailFolderFactory()
    profile, account = folder.account.profile, folder.account
    assert folder.after_read_timeout() == 30
    settings.MAILGATE_IMAP_AFTER_READ_TIMEOUT = 45
    assert folder.after_read_timeout() == 45
    profile.options = {"after_read_timeout": 300}
    assert folder.after_read_timeout() == 300
    account.options = {"after_read_timeout": 60}
    assert folder.after_read_timeout() == 60
    folder.options = {"after_read_timeout": 5}
    assert folder.after_read_timeout() == 5


def test_a_held_lease_keeps_other_pollers_out(dovecot, imap_user):
    folder = inbox(dovecot, imap_user)
    assert imap.claim(folder)
    assert not imap.claim(folder)
    assert imap.poll_folders([folder]).folders == []
    imap.release(folder)
    assert imap.claim(folder)


def test_uidvalidity_change_resyncs_without_duplicates(dovecot, imap_user):
    login, _ = imap_user
    old = [plain("One"), plain("Two")]
    for raw in old:
        dovecot.append(login, "Work", raw)
    folder = inbox(dovecot, imap_user, name="Work")
    assert poll(folder).stored == 2
    first_validity = MailFolder.objects.get(pk=folder.pk).uidvalidity

    dovecot.recreate(login, "Work")  # a server restore: new UIDVALIDITY, UIDs from 1 again
    new = plain("Three")
    for raw in [new, *old]:
        dovecot.append(login, "Work", raw)
    result = poll(folder)

    assert (result.resynced, result.stored, result.duplicates) == (True, 1, 2)
    folder.refresh_from_db()
    assert folder.uidvalidity != first_validity
    rows = Message.objects.filter(folder=folder)
    assert sorted(m.subject for m in rows) == ["One", "Three", "Two"]
    assert {(m.uidvalidity, m.subject): m.uid for m in rows} == {
        (folder.uidvalidity, "Three"): 1,
        (folder.uidvalidity, "One"): 2,
        (folder.uidvalidity, "Two"): 3,
    }


def test_delete_on_server_deletes_only_what_is_stored(dovecot, imap_user, monkeypatch):
    login, _ = imap_user
    for n in range(3):
        dovecot.append(login, "INBOX", plain(f"M{n}"))
    folder = inbox(dovecot, imap_user, delete_on_server=True)

    # The poller dies after committing, before deleting: nothing is lost, and the next poll deletes.
    monkeypatch.setattr(imap, "_delete_stored", lambda client, folder, uidvalidity: 0)
    assert poll(folder).stored == 3
    assert dovecot.uids(login, "INBOX") == [1, 2, 3]
    monkeypatch.undo()

    dovecot.append(login, "INBOX", plain("M3"))
    result = poll(folder)
    assert (result.stored, result.deleted) == (1, 4)
    assert dovecot.uids(login, "INBOX") == []
    assert Message.objects.filter(folder=folder, deleted_on_server=True).count() == 4


def test_unparsable_message_is_kept_raw(dovecot, imap_user):
    login, _ = imap_user
    junk = b"this line is no header at all\r\n\r\n\xff\xfe binary junk\r\n"
    dovecot.append(login, "INBOX", junk)
    folder = inbox(dovecot, imap_user)

    assert poll(folder).stored == 1
    message = Message.objects.get(folder=folder)
    assert message.status == Message.Status.RAW
    assert message.raw == junk
    assert "no header section" in message.last_error
    assert message.inbound.status == InboundMessage.Status.RAW


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_poller_killed_mid_fetch_loses_and_duplicates_nothing(dovecot, imap_user, settings):
    login, _ = imap_user
    total = 40
    for n in range(total):
        dovecot.append(login, "INBOX", plain(f"Big {n}", size=150_000))
    folder = inbox(dovecot, imap_user, delete_on_server=True)
    env = subprocess_env(MAILGATE_IMAP_FETCH_BATCH=1, MEDIA_ROOT=settings.MEDIA_ROOT)
    command = [sys.executable, str(ROOT / "manage.py"), "mailgate_imap"]

    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while Message.objects.filter(folder=folder).count() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    stored_when_killed = Message.objects.filter(folder=folder).count()
    assert 3 <= stored_when_killed < total  # killed in the middle, not before or after

    MailFolder.objects.filter(pk=folder.pk).update(lease_until=timezone.now() - timedelta(seconds=1))  # lease ran out
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr

    rows = Message.objects.filter(folder=folder)
    assert rows.count() == total
    assert sorted(int(s.split()[1]) for s in rows.values_list("subject", flat=True)) == list(range(total))
    assert rows.values("message_id").distinct().count() == total
    assert dovecot.uids(login, "INBOX") == []


def test_a_failing_server_is_the_folders_error_and_the_commands_exit_code(dovecot, imap_user):
    from django.core.management import CommandError, call_command

    good = inbox(dovecot, imap_user)
    dovecot.append(imap_user[0], "INBOX", plain())
    bad = MailFolderFactory(account=account_on(dovecot, (dovecot.take_user()[0], "wrong")))

    with pytest.raises(CommandError, match=r"mailgate_imap: 1 folder\(s\) failed") as exit_info:
        call_command("mailgate_imap", verbosity=0)

    assert exit_info.value.returncode == 1  # what manage.py exits with
    bad.refresh_from_db()
    assert "cannot log in" in bad.last_error and bad.lease_until is None and bad.last_polled_at
    assert Message.objects.filter(folder=good).count() == 1  # the other folder was still polled


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_loop_polls_again_when_the_timeout_passes_and_stops_on_sigterm(dovecot, imap_user, settings):
    login, _ = imap_user
    folder = inbox(dovecot, imap_user, options={"after_read_timeout": 0.5})
    env = subprocess_env(MEDIA_ROOT=settings.MEDIA_ROOT)
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "mailgate_imap", "--loop", "--interval", "0.2", "--discover"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for n in range(2):
            dovecot.append(login, "INBOX", plain(f"Loop {n}"))
            deadline = time.monotonic() + 30
            while Message.objects.filter(folder=folder).count() <= n and time.monotonic() < deadline:
                time.sleep(0.1)
            assert Message.objects.filter(folder=folder).count() == n + 1
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert "1 stored" in out


def test_oversized_message_keeps_its_header_and_stays_on_the_server(dovecot, imap_user, settings):
    settings.MAILGATE_MAX_BYTES = 4000
    login, _ = imap_user
    big, small = plain("Big", size=8000), plain("Small")
    dovecot.append(login, "INBOX", big)
    dovecot.append(login, "INBOX", small)
    folder = inbox(dovecot, imap_user, delete_on_server=True)

    result = poll(folder)

    assert (result.stored, result.deleted) == (2, 1)
    assert dovecot.uids(login, "INBOX") == [1]  # the big one is still there for a person to fetch
    kept = Message.objects.get(folder=folder, uid=1)
    assert (kept.status, kept.truncated, kept.subject) == (Message.Status.RAW, True, "Big")
    assert kept.raw == big[: big.index(b"\r\n\r\n") + 4]
    assert "over the limit of 4000 bytes" in kept.last_error
    assert kept.inbound.status == InboundMessage.Status.TOO_BIG and kept.inbound.size == len(big)
    assert Message.objects.get(folder=folder, uid=2).status == Message.Status.RECEIVED
    assert poll(folder).deleted == 0
