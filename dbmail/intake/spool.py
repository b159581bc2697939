"""The XML spool (seed 003): files other programs drop into a directory become outbox emails.

Producers write each file under a hidden name in the spool directory (say
".reminders-4711.xml.tmp") and rename it to its final, unique, non-hidden name
once it is complete: a rename within one file system is atomic, so a file is
never seen half-written. Hidden files and anything that is not a regular file
are never read.

intake() takes in every complete file: it is parsed with defusedxml (no DTDs,
no entities: the files come from other programs and are not trusted) and
validated, and its items become TextOfEmail rows together with a SpoolFile
row (the file's name and SHA-256) in ONE transaction. A crash rolls the whole
file back; a file whose name and content are already recorded is never taken
in again, so a crash after the commit cannot import it twice.

settle() moves each file beside the spool once its items have outcomes:
  defer/  an item was deferred and is being retried (the file waits there);
  sent/   every item was accepted by the SMTP server;
  drop/   an item was dropped (bad address, unknown sender, a 5xx, too many
          attempts) or the file is malformed; the reason is in <name>.reason.
A file stays in the spool directory itself until its first outcome. Files
in sent/ and drop/ are removed DBMAIL_SPOOL_KEEP_DAYS after they got there;
nothing else is ever deleted.
"""

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.db import transaction
from django.db.models import Count
from django.db.models.functions import Lower
from django.utils import timezone

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.content import recipients, rendering
from dbmail.content.addresses import mailbox_key
from dbmail.exceptions import SpoolError
from dbmail.exceptions import SpoolFormatError as FormatError
from dbmail.models import DeliveryEvent, SenderAccount, SpoolFile, SpoolItem, Suppression, TextOfEmail
from dbmail.ops import sites
from dbmail.send import destinations

log = logging.getLogger(__name__)

FIELDS = ("fld_time", "fld_sender", "fld_address", "fld_topic", "fld_content")
TIME_FORMAT = "%d.%m.%Y %H:%M:%S"
DIRS = {
    SpoolFile.Status.DEFERRED: "defer",
    SpoolFile.Status.SENT: "sent",
    SpoolFile.Status.DROPPED: "drop",
}
# A file that does not parse and changed this recently may belong to a producer that writes in
# place instead of renaming: it gets another look on a later run rather than being dropped.
GRACE_SECONDS = 60
_FINAL_FILE = (SpoolFile.Status.SENT, SpoolFile.Status.DROPPED)


@dataclass(frozen=True)
class Item:
    position: int
    fld_time: datetime
    sender: str
    address: str
    topic: str
    content: str


@dataclass
class IntakeResult:
    files: int = 0  # files taken in (malformed ones included)
    emails: int = 0
    malformed: int = 0
    errors: list = field(default_factory=list)


@dataclass
class SettleResult:
    sent: int = 0
    deferred: int = 0
    dropped: int = 0
    removed: int = 0  # old files deleted from sent/ and drop/


def directory():
    """This site's spool directory, or None when the spool is not configured."""
    if not conf.DBMAIL_SPOOL_DIR:
        return None
    return Path(conf.DBMAIL_SPOOL_DIR.replace("{sid}", sites.current()))


def _existing_directory():
    root = directory()
    if root is not None and not root.is_dir():
        raise SpoolError(f"the spool directory {root} (DBMAIL_SPOOL_DIR) does not exist")
    return root


# --- parsing ---


def parse(data):
    """The items of one spool file (bytes); FormatError says what is wrong with it."""
    # Here, not at the top: dbmail_cron imports this module on every run, and most runs find no file.
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(data, forbid_dtd=True)
    except (ParseError, DefusedXmlException) as exc:
        raise FormatError(f"not well-formed XML: {exc}") from None
    if root.tag != "list":
        raise FormatError(f"the root element is <{root.tag}>, not <list>")
    items = []
    for position, element in enumerate(root, 1):
        if element.tag != "item":
            raise FormatError(f"element {position} of <list> is <{element.tag}>, not <item>")
        values = {}
        for child in element:
            if child.tag in values:
                raise FormatError(f"item {position}: <{child.tag}> appears twice")
            values[child.tag] = "".join(child.itertext()).strip()
        missing = [name for name in FIELDS if name not in values]
        if missing:
            raise FormatError(f"item {position}: missing {', '.join(f'<{m}>' for m in missing)}")
        items.append(
            Item(
                position=position,
                fld_time=parse_time(values["fld_time"], position),
                sender=values["fld_sender"],
                address=values["fld_address"],
                topic=values["fld_topic"],
                content=values["fld_content"],
            )
        )
    if not items:
        raise FormatError("the <list> has no <item>")
    return items


def parse_time(text, position=1):
    """'17.10.2011 00:00:11' in TIME_ZONE -> an aware datetime."""
    try:
        naive = datetime.strptime(text, TIME_FORMAT)
    except ValueError:
        raise FormatError(f"item {position}: <fld_time> {text!r} is not dd.mm.yyyy HH:MM:SS") from None
    return timezone.make_aware(naive, timezone.get_default_timezone())


# --- intake ---


def intake(now=None):
    """Take in every complete file in the spool directory; a no-op when DBMAIL_SPOOL_DIR is unset."""
    result = IntakeResult()
    root = _existing_directory()
    for entry in _complete_files(root):
        try:
            _take_in(root, entry, now or timezone.now(), result)
        except FileNotFoundError:
            continue  # taken in and moved on by another host meanwhile, or withdrawn by its producer
        except OSError as exc:  # one unreadable file must not hold up the others
            log.warning("spool file %s: %s", entry.path, exc)
            result.errors.append(f"{entry.name}: {exc}")
    return result


def _complete_files(root=None):
    """The spool directory's entries a producer has finished (not hidden, regular files), by name."""
    root = root or _existing_directory()
    if root is None:
        return []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise SpoolError(f"cannot read the spool directory {root}: {exc}") from exc
    return [e for e in entries if not e.name.startswith(".") and e.is_file(follow_symlinks=False)]


def _take_in(root, entry, now, result):
    data = Path(entry.path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    known = SpoolFile.objects.filter(name=entry.name, sha256=digest).first()
    if known is not None:
        if known.location != entry.name:
            # Its twin was taken in and has moved on: this is a second copy, never sent twice.
            reason = f"the same file (name and content) was taken in at {known.received_at:%Y-%m-%d %H:%M:%S %Z}"
            _put(Path(entry.path), root / DIRS[SpoolFile.Status.DROPPED], entry.name, digest, reason)
        return  # else: taken in before (perhaps by a run that died before settling it)
    try:
        items, error = parse(data), ""
    except FormatError as exc:
        if time.time() - entry.stat().st_mtime < GRACE_SECONDS:
            return
        items, error = [], str(exc)
    with transaction.atomic():
        record, created = SpoolFile.objects.get_or_create(
            name=entry.name,
            sha256=digest,
            defaults={
                "size": len(data),
                "location": entry.name,
                "status": SpoolFile.Status.DROPPED if error else SpoolFile.Status.QUEUED,
                "reason": error,
                "received_at": now,
            },
        )
        if not created:
            return  # another host took it in a moment ago
        result.emails += create_emails(record, items, now)
    result.files += 1
    result.malformed += bool(error)


def cycle(send, on_intake=None):
    """Take in the spool, `send()`, then settle the spool: (IntakeResult, what send returned, SettleResult).

    The order every sending command keeps: files become emails before the
    send, so their mail goes in the same run, and are moved by their emails'
    outcomes after it. Both steps do nothing unless DBMAIL_SPOOL_DIR is set.
    `on_intake(taken)` is called before sending (to report unreadable files first).
    """
    taken = intake()
    if on_intake:
        on_intake(taken)
    result = send()
    return taken, result, settle()


def create_emails(record, items, now):
    """The outbox emails of one file's items (dropped ones with their reason); returns how many."""
    emails = make_emails(items, now)
    SpoolItem.objects.bulk_create(
        SpoolItem(email=email, file=record, position=item.position, fld_time=item.fld_time)
        for item, email in zip(items, emails, strict=True)
    )
    return len(emails)


def make_emails(items, now):
    """Save one outbox email per item, in order (the table queue's rows are items too); returns them.

    The seed's rules: only an active sender account sends, and a bad address (or one that gets
    no mail at all) is dropped with its reason, logged as the admin's event of its creation.
    """
    senders = {item.sender.lower() for item in items}
    accounts = {
        a.address.lower(): a
        for a in SenderAccount.objects.annotate(lower=Lower("address")).filter(active=True, lower__in=senders)
    }
    stopped = Suppression.stopping_all_mail(recipients.normalise_address(item.address) for item in items)
    emails = [email_for(item, accounts.get(item.sender.lower()), now, stopped) for item in items]
    TextOfEmail.objects.bulk_create(emails)
    DeliveryEvent.objects.bulk_create(
        DeliveryEvent(email=e, at=now, kind=DeliveryEvent.Kind.ADMIN, outcome=e.status, text=e.last_error)
        for e in emails
        if e.status == states.REFUSE.target
    )
    return emails


def email_for(item, account, now, stopped):
    """The (unsaved) email of one item: queued, or dropped with the reason it can never be sent."""
    address = recipients.normalise_address(item.address)
    email = TextOfEmail(
        account=account,
        to_address=address[:254],
        dest_group=destinations.group_of(address),
        from_header=account.from_header if account else item.sender[:400],
        envelope_sender=(account.address if account else item.sender)[:254],
        subject=" ".join(item.topic.split())[:998],
        text=item.content,
        message_id=rendering.new_message_id(account.address if account else item.sender),
        status=states.ENQUEUE.target,
        status_changed_at=now,
        next_attempt_at=now,
        created_at=now,
    )
    if account is None:
        error = f"fld_sender {item.sender!r} is not a configured sender account"
    else:
        # Spool mail is one program's message to one person: only what stops all mail stops it.
        suppression = stopped.get(mailbox_key(address))
        error = recipients.address_error(address) or (suppression.refusal() if suppression else "")
    if error:
        email.status, email.last_error = states.REFUSE.target, error
    return email


# --- what waits in the directory, read only (smailer queue) ---


@dataclass(frozen=True)
class WaitingItem:
    """An item of a file not taken in yet, with a queue id of its own until it becomes an email."""

    file: str
    item: Item

    @property
    def queue_id(self):
        return hashlib.sha256(f"spool:{self.file}:{self.item.position}".encode()).hexdigest()[:16].upper()


def waiting_items():
    """The items of the complete files in the spool directory not taken in yet; reads, never moves.

    A malformed file is left out (it is dropped when taken in), as is one taken in before.
    """
    for entry in _complete_files():
        try:
            data = Path(entry.path).read_bytes()
        except OSError:
            continue  # taken in and moved meanwhile, or unreadable: the next run reports it
        if SpoolFile.objects.filter(name=entry.name, sha256=hashlib.sha256(data).hexdigest()).exists():
            continue
        try:
            items = parse(data)
        except FormatError:
            continue
        for item in items:
            yield WaitingItem(entry.name, item)


# --- settling: moving files to where their items' outcomes say ---


def settle(now=None):
    """Move files whose items reached outcomes, then remove old ones; a no-op without a spool."""
    result = SettleResult()
    root = _existing_directory()
    if root is None:
        return result
    now = now or timezone.now()
    pending = SpoolFile.objects.filter(settled_at__isnull=True)
    counts = {}
    for row in (
        SpoolItem.objects.filter(file__in=pending).values("file_id", "email__status").annotate(n=Count("pk")).order_by()
    ):
        counts.setdefault(row["file_id"], {})[row["email__status"]] = row["n"]
    for pk, status, location in pending.values_list("pk", "status", "location"):
        if _unchanged(status, location, counts.get(pk, {})):
            continue
        target = _settle_one(root, pk, now)
        if target:
            setattr(result, target, getattr(result, target) + 1)
    result.removed = clean(root, now)
    return result


def file_status(counts, current):
    """A file's status from its items' email statuses ({status: n})."""
    waiting = sum(n for status, n in counts.items() if status not in states.FINAL)
    if not waiting:
        if any(counts.get(status) for status in states.NEVER_SENT) or not counts:
            return SpoolFile.Status.DROPPED
        return SpoolFile.Status.SENT
    if counts.get(states.EmailStatus.DEFERRED):
        return SpoolFile.Status.DEFERRED
    return current  # once in defer/, a file waits there until it is done


def _unchanged(status, location, counts):
    """True when a file is still waiting where it should (nothing to move)."""
    if status not in SpoolFile.OPEN or file_status(counts, status) != status:
        return False
    if not location:
        return True  # gone (see _put); its mail goes on all the same
    if status == SpoolFile.Status.DEFERRED:
        return location.startswith(DIRS[status] + "/")
    return "/" not in location


def _settle_one(root, pk, now):
    """Move one file where its items' outcomes say; the status it got, or None if it had to stay."""
    with transaction.atomic():
        # Another host settling the same file holds the lock; it does the move.
        record = SpoolFile.objects.select_for_update(skip_locked=True).filter(pk=pk, settled_at__isnull=True).first()
        if record is None:
            return None
        # Counted again under the lock: the first count may be stale by now.
        counts = dict(record.items.values_list("email__status").annotate(n=Count("pk")).order_by())
        if _unchanged(record.status, record.location, counts):
            return None
        target = record.status if record.status in _FINAL_FILE else file_status(counts, record.status)
        reason = record.reason
        if target == SpoolFile.Status.DROPPED and not reason:
            reason = drop_reason(record)
        source = root / record.location if record.location else None
        record.location = _put(source, root / DIRS[target], record.name, record.sha256, reason)
        record.status = target
        if target in _FINAL_FILE:
            record.reason, record.settled_at = reason, now
        record.save(update_fields=["location", "status", "reason", "settled_at"])
    return target


def drop_reason(record):
    """One line per item that did not go out."""
    lines = []
    for item in record.items.select_related("email").filter(email__status__in=states.NEVER_SENT):
        why = item.email.last_error or item.email.status
        lines.append(f"item {item.position} ({item.email.to_address}): {why}")
    return "\n".join(lines) or "the file has no items left to send"


def _put(source, target_dir, name, digest, reason=""):
    """Move a spool file into `target_dir`, its reason beside it; returns its path relative to the spool.

    Safe to repeat after a crash: a file that was already moved is found in `target_dir`.
    """
    target_dir.mkdir(exist_ok=True)
    if source is not None and source.exists():
        if _digest(source) != digest:
            # A producer replaced the file after it was taken in; the new one is taken in on its own.
            log.warning("spool file %s changed after it was taken in; left where it is", source)
            return ""
        target = next(t for t in _candidates(target_dir, name) if not _taken(t))
        if reason:
            _write_atomically(target.with_name(target.name + ".reason"), reason.rstrip("\n") + "\n")
        os.replace(source, target)
        os.utime(target)  # retention counts from the outcome, not from when the producer wrote it
        return str(target.relative_to(target_dir.parent))
    for target in _candidates(target_dir, name):
        if not target.exists():
            break
        if _digest(target) == digest:
            return str(target.relative_to(target_dir.parent))  # moved by a run that died before recording it
    log.warning("spool file %s is gone; its mail is in the outbox all the same", source or name)
    return ""


def _candidates(folder, name):
    """name, name.1, name.2...: an older file of the same name in `folder` is never overwritten."""
    yield folder / name
    n = 1
    while True:
        yield folder / f"{name}.{n}"
        n += 1


def _taken(path):
    return path.exists() or path.with_name(path.name + ".reason").exists()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomically(path, text):
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# --- retention ---


def clean(root, now=None):
    """Delete files that have been in sent/ or drop/ for DBMAIL_SPOOL_KEEP_DAYS; return how many."""
    keep = timedelta(days=conf.DBMAIL_SPOOL_KEEP_DAYS)
    cutoff = time.time() - keep.total_seconds()
    removed = 0
    for name in (DIRS[SpoolFile.Status.SENT], DIRS[SpoolFile.Status.DROPPED]):
        folder = root / name
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                try:
                    os.unlink(entry.path)
                    removed += not entry.name.endswith(".reason")
                except FileNotFoundError:
                    pass  # another host removed it first
    # With its file gone, a file's record is no longer needed to recognise a second copy.
    SpoolFile.objects.filter(status__in=_FINAL_FILE, settled_at__lt=(now or timezone.now()) - keep).delete()
    return removed
