"""The IMAP side of mailboxes: discovering an account's folders and polling them.

A poll of one folder, in this order, so that a poller killed anywhere loses
and duplicates nothing:

1. SELECT the folder and read UIDVALIDITY; a new value means the server
   renumbered its messages, so fetching starts again from UID 1 (copies of
   mail already stored are recognised by their bytes, see mailbox.py).
2. When the folder deletes on the server: delete the messages stored in an
   earlier run whose deletion did not happen (the poller died after the commit).
3. Fetch the UIDs above the highest one stored, in batches, and store each
   message in its own transaction (mailbox.store_incoming).
4. Only then delete the stored messages on the server, and record that.

Folders are claimed with a lease, so several pollers (on several hosts) never
poll the same folder at once.
"""

import logging
import ssl
from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from imapclient import IMAPClient

from mailgate.conf import settings as conf
from mailgate.exceptions import MailboxError
from mailgate.mailboxes import store as mailbox
from mailgate.models import MailAccount, MailFolder, Message

log = logging.getLogger(__name__)


def connect(account):
    """A logged-in IMAPClient for `account` (the caller logs out)."""
    profile = account.profile
    try:
        client = IMAPClient(
            profile.imap_host,
            port=profile.imap_port,
            ssl=profile.imap_ssl,
            ssl_context=ssl.create_default_context() if profile.imap_ssl else None,
            timeout=conf.MAILGATE_IMAP_TIMEOUT,
        )
        if profile.imap_starttls:
            client.starttls(ssl.create_default_context())
        client.login(account.login, account.secret)
    except Exception as exc:  # socket, TLS and IMAP errors alike: one clear message naming the account
        server = f"{profile.imap_host}:{profile.imap_port}"
        raise MailboxError(f"{account.address}: cannot log in to {server}: {exc}") from exc
    return client


def _logout(client):
    try:
        client.logout()
    except Exception:  # the connection is already gone; nothing to tidy
        pass


def discover(account):
    """List the account's folders and store the new ones (disabled); returns the names added.

    Folders gone from the server are kept (with their messages) and marked as such.
    """
    client = connect(account)
    try:
        listed = client.list_folders()
    except Exception as exc:
        raise MailboxError(f"{account.address}: cannot list folders: {exc}") from exc
    finally:
        _logout(client)
    names = [name for flags, _, name in listed if b"\\Noselect" not in flags and b"\\NonExistent" not in flags]
    known = set(account.folders.values_list("name", flat=True))
    added = [name for name in names if name not in known]
    MailFolder.objects.bulk_create([MailFolder(account=account, name=name) for name in added], ignore_conflicts=True)
    account.folders.filter(name__in=names).update(exists_on_server=True)
    account.folders.exclude(name__in=names).update(exists_on_server=False)
    MailAccount.objects.filter(pk=account.pk).update(discovered_at=timezone.now(), last_error="")
    return added


def discover_quietly(account):
    """discover() for account creation: a server that cannot be reached is noted on the account, not raised."""
    try:
        return discover(account)
    except MailboxError as exc:
        MailAccount.objects.filter(pk=account.pk).update(last_error=str(exc))
        account.last_error = str(exc)
        return []


@dataclass
class PollResult:
    folder: str
    stored: int = 0
    duplicates: int = 0
    deleted: int = 0
    resynced: bool = False
    error: str = ""


@dataclass
class RunResult:
    folders: list = field(default_factory=list)

    @property
    def stored(self):
        return sum(r.stored for r in self.folders)

    @property
    def errors(self):
        return [f"{r.folder}: {r.error}" for r in self.folders if r.error]


def is_due(folder, now):
    return folder.last_polled_at is None or now >= folder.last_polled_at + timedelta(
        seconds=folder.after_read_timeout()
    )


def due_folders(now=None):
    now = now or timezone.now()
    folders = MailFolder.objects.filter(enabled=True, account__enabled=True, exists_on_server=True).select_related(
        "account__profile"
    )
    return [folder for folder in folders if is_due(folder, now)]


def claim(folder, now=None):
    """Take the folder's lease; False when another poller holds it."""
    now = now or timezone.now()
    until = now + timedelta(seconds=conf.MAILGATE_IMAP_LEASE_SECONDS)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    return MailFolder.objects.filter(free, pk=folder.pk).update(lease_until=until) == 1


def renew(folder):
    """Extend the lease of a folder this poller holds (a long folder is fetched in many batches)."""
    until = timezone.now() + timedelta(seconds=conf.MAILGATE_IMAP_LEASE_SECONDS)
    MailFolder.objects.filter(pk=folder.pk).update(lease_until=until)


def release(folder, error=""):
    MailFolder.objects.filter(pk=folder.pk).update(lease_until=None, last_polled_at=timezone.now(), last_error=error)


def poll_due():
    """Poll every enabled folder whose timeout has passed."""
    return poll_folders(due_folders())


def poll_folders(folders):
    """Claim and poll each folder in turn; a server that fails is that folder's error, never the run's."""
    result = RunResult()
    for folder in folders:
        if not claim(folder):
            continue
        try:
            outcome = poll(folder)
        except MailboxError as exc:
            outcome = PollResult(str(folder), error=str(exc))
        except Exception as exc:  # one broken folder must not stop the others; the next run tries again
            log.exception("mailgate: polling %s failed", folder)
            outcome = PollResult(str(folder), error=f"{type(exc).__name__}: {exc}")
        release(folder, outcome.error[:5000])
        result.folders.append(outcome)
    return result


def poll(folder):
    """One poll of one claimed folder (steps 1-4 of the module's description)."""
    result = PollResult(str(folder))
    client = connect(folder.account)
    try:
        try:
            selected = client.select_folder(folder.name, readonly=not folder.delete_on_server)
        except Exception as exc:
            raise MailboxError(f"{folder}: cannot select the folder: {exc}") from exc
        uidvalidity = int(selected[b"UIDVALIDITY"])
        folder.refresh_from_db(fields=["uidvalidity", "last_uid"])
        if folder.uidvalidity != uidvalidity:
            result.resynced = folder.uidvalidity is not None
            MailFolder.objects.filter(pk=folder.pk).update(uidvalidity=uidvalidity, last_uid=0)
            folder.uidvalidity, folder.last_uid = uidvalidity, 0
        if folder.delete_on_server:
            result.deleted += _delete_stored(client, folder, uidvalidity)
        uids = sorted(uid for uid in client.search(["UID", f"{folder.last_uid + 1}:*"]) if uid > folder.last_uid)
        batch_size = conf.MAILGATE_IMAP_FETCH_BATCH
        for start in range(0, len(uids), batch_size):
            batch = uids[start : start + batch_size]
            sizes = {uid: data.get(b"RFC822.SIZE", 0) for uid, data in client.fetch(batch, ["RFC822.SIZE"]).items()}
            # Over the gate's limit only the header is fetched, as the gate keeps only the start of such mail.
            too_big = [uid for uid in batch if sizes.get(uid, 0) > conf.MAILGATE_MAX_BYTES]
            whole = [uid for uid in batch if uid not in too_big]
            fetched = client.fetch(whole, ["BODY.PEEK[]"]) if whole else {}
            if too_big:
                headers = client.fetch(too_big, ["BODY.PEEK[HEADER]"])
                fetched.update({uid: {b"BODY[]": data.get(b"BODY[HEADER]")} for uid, data in headers.items()})
            for uid in batch:
                data = fetched.get(uid)
                if data is None or data.get(b"BODY[]") is None:
                    continue  # expunged by someone else between SEARCH and FETCH
                size = sizes[uid] if uid in too_big else None
                _, created = mailbox.store_incoming(folder, uidvalidity, uid, data[b"BODY[]"], size=size)
                if created:
                    result.stored += 1
                else:
                    result.duplicates += 1
            if folder.delete_on_server:
                result.deleted += _delete_stored(client, folder, uidvalidity)
            renew(folder)
    finally:
        _logout(client)
    return result


def _delete_stored(client, folder, uidvalidity):
    """Delete on the server what is safely stored here, then record it; returns how many."""
    stored = Message.objects.filter(folder=folder, uidvalidity=uidvalidity, deleted_on_server=False, truncated=False)
    uids = list(stored.values_list("uid", flat=True))
    if not uids:
        return 0
    client.delete_messages(uids)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()
    stored.filter(uid__in=uids).update(deleted_on_server=True)
    return len(uids)
