"""The table queue (seed 003, SOWASQL): rows other programs INSERT into a table become outbox emails.

The table has the seed's tbl_mails shape: id, fld_time, fld_sender,
fld_address, fld_topic, fld_content, fld_status and, beside the status,
fld_reason. Its name is DBMAIL_SMAILER_TABLE (tbl_mails, which migration
0015_table_queue creates, by default); DBMAIL_SMAILER_DATABASE names another database
alias (DATABASE_URL_<SID>) when the table lives in a site's own database.
Because the table may be anyone's, it is read and written with plain SQL
through connections[alias], its name quoted.

fld_status is the seed's: '' (or NULL) waiting, S sent, d deferred (retried
as spool mail is), D dropped with fld_reason saying why; T marks a row taken
into the outbox and not tried yet.

take() claims waiting rows (SELECT ... FOR UPDATE SKIP LOCKED where the
database has it), makes their emails by the spool's rules (dbmail.intake.spool:
only configured sender accounts send, same rendering), each linked to its
row by a QueueTableItem unique on (database, table, row id), and marks the
rows T, in this order of commits:

  1. the outbox database commits the emails and their links;
  2. then the queue's database commits the T marks (and releases the row locks).

In the site's own database the two are one transaction. In another, a crash
between the two leaves rows waiting that already have emails: the next take
finds their links and only marks them, so a row is never sent twice nor lost.
Several takers on several hosts never hold the same row (the lock), and where
the database cannot skip locked rows the unique link refuses the second one.

write_back() then writes each linked email's outcome to its row, S, d or D
with the reason, again outbox-first so a crash only repeats a write.
"""

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, DatabaseError, IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from dbmail import states
from dbmail.conf import settings as conf
from dbmail.exceptions import QueueTableError
from dbmail.exceptions import SpoolFormatError as FormatError
from dbmail.intake import spool
from dbmail.models import QueueTableItem, QueueTableMail
from dbmail.ops import sites

log = logging.getLogger(__name__)

# The seed's fld_status values, and ours for a row taken into the outbox.
WAITING, TAKEN, SENT, DEFERRED, DROPPED = "", "T", "S", "d", "D"
COLUMNS = ("id", "fld_time", "fld_sender", "fld_address", "fld_topic", "fld_content", "fld_status", "fld_reason")
BATCH = 500
# A site's own table may have a narrow fld_reason; every reason we write fits 255 characters.
REASON_LIMIT = 255
_WAITING_SQL = "(fld_status = '' OR fld_status IS NULL)"


@dataclass(frozen=True)
class Table:
    """Where the queue is: the connection to use and what the links call it."""

    name: str  # as configured
    alias: str  # the connection
    database: str  # "" when it is the site's own database (one transaction with the outbox)

    @property
    def connection(self):
        return connections[self.alias]

    @property
    def quoted(self):
        return ".".join(self.connection.ops.quote_name(part) for part in self.name.split("."))

    def describe(self):
        where = f"database {self.database!r}" if self.database else "this site's database"
        return f"the queue table {self.name} (DBMAIL_SMAILER_TABLE) in {where}"

    def links(self):
        return QueueTableItem.objects.filter(database=self.database, table=self.name)


@dataclass
class TakeResult:
    rows: int = 0  # rows taken (refused ones included)
    emails: int = 0
    refused: int = 0  # rows marked D without an email (an unusable fld_time)
    retaken: int = 0  # rows already linked to an email (a crash between the commits, or a reset row)


@dataclass
class WriteResult:
    written: Counter = field(default_factory=Counter)  # rows written, by fld_status
    gone: list = field(default_factory=list)  # row ids no longer in the table

    @property
    def sent(self):
        return self.written[SENT]

    @property
    def deferred(self):
        return self.written[DEFERRED]

    @property
    def dropped(self):
        return self.written[DROPPED]


def table():
    """This site's queue table, or None when DBMAIL_SMAILER_TABLE is empty; QueueTableError if unusable."""
    if not conf.DBMAIL_SMAILER_TABLE:
        return None
    site = sites.current()
    wanted = conf.DBMAIL_SMAILER_DATABASE.replace("{sid}", site)
    if wanted in ("", site):
        return Table(conf.DBMAIL_SMAILER_TABLE, DEFAULT_DB_ALIAS, "")
    if wanted == DEFAULT_DB_ALIAS:
        # After --sid, the alias "default" is the chosen site's database (dbmail.ops.sites).
        raise QueueTableError(
            f"Setting DBMAIL_SMAILER_DATABASE={wanted!r}: with --sid={site}, name the queue's database "
            "by a DATABASE_URL_<SID> alias"
        )
    if wanted not in settings.DATABASES:
        raise QueueTableError(
            f"Setting DBMAIL_SMAILER_DATABASE={conf.DBMAIL_SMAILER_DATABASE!r}: there is no database {wanted!r} "
            f"(add it with the setting DATABASE_URL_{wanted.upper()})"
        )
    return Table(conf.DBMAIL_SMAILER_TABLE, wanted, wanted)


def _sql(where, cursor, sql, params=()):
    try:
        cursor.execute(sql, params)
    except DatabaseError as exc:
        raise QueueTableError(f"{where.describe()} cannot be used: {str(exc).strip()}") from exc


# --- taking rows in ---


def take(now=None):
    """Take every waiting row into the outbox; a no-op when DBMAIL_SMAILER_TABLE is empty."""
    result = TakeResult()
    where = table()
    if where is None:
        return result
    while _take_batch(where, now or timezone.now(), result) == BATCH:
        pass
    return result


def _take_batch(where, now, result):
    """Take up to BATCH rows; returns how many rows it saw."""
    lock = " FOR UPDATE SKIP LOCKED" if where.connection.features.has_select_for_update_skip_locked else ""
    select = (
        f"SELECT id, fld_time, fld_sender, fld_address, fld_topic, fld_content FROM {where.quoted} "
        f"WHERE {_WAITING_SQL} ORDER BY id LIMIT {BATCH}{lock}"
    )
    try:
        with transaction.atomic(using=where.alias):  # the row locks are held until the marks commit
            with where.connection.cursor() as cursor:
                _sql(where, cursor, select)
                rows = cursor.fetchall()
            if not rows:
                return 0
            with transaction.atomic():  # the outbox; a savepoint when the queue is in the same database
                marks = _make_emails(where, rows, now, result)
            with where.connection.cursor() as cursor:
                _mark(where, cursor, marks)
    except IntegrityError:
        # Another taker linked one of these rows first (a database without SKIP LOCKED): it has them.
        log.info("%s: rows taken by another sender meanwhile", where.describe())
        return 0
    result.rows += len(rows)
    return len(rows)


def _make_emails(where, rows, now, result):
    """Emails and links for rows not linked yet; returns {row id: (fld_status, fld_reason)} to write."""
    ids = [row[0] for row in rows]
    linked = dict(where.links().filter(row_id__in=ids).values_list("row_id", "pk"))
    if linked:
        # Taken before: their emails exist. Writing their status again puts the row right.
        where.links().filter(pk__in=linked.values()).update(written=TAKEN, settled_at=None)
        result.retaken += len(linked)
    marks, items = {row_id: (TAKEN, "") for row_id in linked}, []
    for row_id, fld_time, sender, address, topic, content in rows:
        if row_id in linked:
            continue
        try:
            when = _time(fld_time, where)
        except FormatError as exc:
            marks[row_id] = (DROPPED, str(exc)[:REASON_LIMIT])
            result.refused += 1
            continue
        items.append(spool.Item(row_id, when, _str(sender), _str(address), _str(topic), _str(content)))
    emails = spool.make_emails(items, now)
    QueueTableItem.objects.bulk_create(
        QueueTableItem(
            email=email,
            database=where.database,
            table=where.name,
            row_id=item.position,
            fld_time=item.fld_time,
            written=letter(email.status) or TAKEN,
            settled_at=now if letter(email.status) in (SENT, DROPPED) else None,
        )
        for item, email in zip(items, emails, strict=True)
    )
    for item, email in zip(items, emails, strict=True):
        status = letter(email.status) or TAKEN
        marks[item.position] = (status, reason(email) if status == DROPPED else "")
    result.emails += len(emails)
    return marks


def _time(value, where):
    """A row's fld_time: a timestamp column, or the seed's 'dd.mm.yyyy HH:MM:SS' text in TIME_ZONE.

    A timestamp without a zone is read as Django reads its own: in the connection's time zone
    (UTC unless DATABASES sets TIME_ZONE), which is also what the database's now() wrote.
    """
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else timezone.make_aware(value, where.connection.timezone)
    if isinstance(value, str) and value.strip():
        try:
            naive = datetime.strptime(value.strip(), spool.TIME_FORMAT)
        except ValueError:
            raise FormatError(f"fld_time {value.strip()!r} is not dd.mm.yyyy HH:MM:SS") from None
        return timezone.make_aware(naive, timezone.get_default_timezone())
    raise FormatError(
        "fld_time is empty" if value in (None, "") or isinstance(value, str) else f"fld_time {value!r} is not a time"
    )


def _str(value):
    return "" if value is None else str(value)


def _mark(where, cursor, marks):
    """Write {row id: (fld_status, fld_reason)}: one statement per distinct pair (most are (T, ''))."""
    by_value = {}
    for row_id, value in marks.items():
        by_value.setdefault(value, []).append(row_id)
    for (status, why), ids in by_value.items():
        placeholders = ", ".join(["%s"] * len(ids))
        _sql(
            where,
            cursor,
            f"UPDATE {where.quoted} SET fld_status = %s, fld_reason = %s WHERE id IN ({placeholders})",
            [status, why, *ids],
        )


# --- writing outcomes back ---


def letter(status):
    """The row's fld_status for an email's status; None while it is still to be tried."""
    if status in states.ACCEPTED:
        return SENT
    if status in states.NEVER_SENT:
        return DROPPED
    if status == states.EmailStatus.DEFERRED:
        return DEFERRED
    return None


def reason(email):
    return (email.last_error or email.status)[:REASON_LIMIT]


_NEEDS_WRITING = (
    (Q(email__status__in=states.ACCEPTED) & ~Q(written=SENT))
    | (Q(email__status__in=states.NEVER_SENT) & ~Q(written=DROPPED))
    | (Q(email__status=states.EmailStatus.DEFERRED) & ~Q(written=DEFERRED))
)


def write_back(now=None):
    """Write the outcome of every linked email that changed to its row; a no-op without a queue table."""
    result = WriteResult()
    where = table()
    if where is None:
        return result
    now = now or timezone.now()
    while True:
        links = list(
            where.links()
            .filter(_NEEDS_WRITING, settled_at__isnull=True)
            .select_related("email")
            .only("pk", "row_id", "written", "settled_at", "email", "email__status", "email__last_error")
            .order_by("pk")[:BATCH]
        )
        if not links:
            return result
        _write_batch(where, links, now, result)


def _write_batch(where, links, now, result):
    values = {}
    for link in links:
        status = letter(link.email.status)
        values[link.row_id] = (status, "" if status == SENT else reason(link.email))
    with transaction.atomic(using=where.alias):
        with where.connection.cursor() as cursor:
            placeholders = ", ".join(["%s"] * len(values))
            _sql(where, cursor, f"SELECT id FROM {where.quoted} WHERE id IN ({placeholders})", list(values))
            found = {row[0] for row in cursor.fetchall()}
            _mark(where, cursor, {row_id: value for row_id, value in values.items() if row_id in found})
        for link in links:
            status = values[link.row_id][0]
            link.written = status
            if link.row_id not in found:
                link.settled_at = now  # nothing more to write
                result.gone.append(link.row_id)
                log.warning("%s: row %s is gone; its email is %s", where.describe(), link.row_id, link.email.status)
                continue
            if status in (SENT, DROPPED):
                link.settled_at = now
            result.written[status] += 1
        # The outbox's record last: a crash before it only repeats the writes above.
        QueueTableItem.objects.bulk_update(links, ["written", "settled_at"])


# --- what waits in the table, read only (smailer queue) ---


@dataclass(frozen=True)
class WaitingRow:
    row_id: int
    fld_time: object  # a datetime, or the text as it is when it does not parse
    sender: str
    address: str
    table: str

    @property
    def queue_id(self):
        return hashlib.sha256(f"table:{self.table}:{self.row_id}".encode()).hexdigest()[:16].upper()


def waiting_rows(sender=None):
    """The rows waiting to be taken in (of `sender`, an address, or all), oldest id first; reads only."""
    where = table()
    if where is None:
        return
    query = f"SELECT id, fld_time, fld_sender, fld_address FROM {where.quoted} WHERE {_WAITING_SQL}"
    params = []
    if sender:
        query += " AND LOWER(fld_sender) = %s"
        params.append(sender.lower())
    last = None
    while True:
        page = query + (" AND id > %s" if last is not None else "") + f" ORDER BY id LIMIT {BATCH}"
        with where.connection.cursor() as cursor:
            _sql(where, cursor, page, [*params, *([last] if last is not None else [])])
            rows = cursor.fetchall()
        if not rows:
            return
        last = rows[-1][0]
        linked = set(where.links().filter(row_id__in=[r[0] for r in rows]).values_list("row_id", flat=True))
        for row_id, fld_time, row_sender, address in rows:
            if row_id in linked:
                continue  # taken in, its mark not written yet: the outbox lists its email
            try:
                when = _time(fld_time, where)
            except FormatError:
                when = fld_time
            yield WaitingRow(row_id, when, _str(row_sender), _str(address), where.name)


# --- system checks ---


def check_database(app_configs=None, **kwargs):
    """The table's database is configured (`manage.py check`).

    With "{sid}" in DBMAIL_SMAILER_DATABASE the database depends on the --sid a command is
    given, which checks run before: the command names a missing one when it runs.
    """
    if "{sid}" in conf.DBMAIL_SMAILER_DATABASE:
        return []
    try:
        table()
    except QueueTableError as exc:
        return [checks.Error(str(exc), id="dbmail.E010")]
    return []


def check_table(app_configs=None, databases=None, **kwargs):
    """The queue table exists with the seed's columns (`manage.py check --database default`, migrate)."""
    try:
        where = table()
    except QueueTableError:
        return []  # check_database reports it
    if where is None or where.alias not in (databases or ()):
        return []
    try:
        with where.connection.cursor() as cursor:
            if "." not in where.name and where.name not in where.connection.introspection.table_names(cursor):
                if where.database == "" and where.name == QueueTableMail._meta.db_table:
                    return []  # ours, before migrate has created it (dbmail 0015_table_queue)
                return [checks.Error(f"{where.describe()} does not exist", id="dbmail.E011")]
            _sql(where, cursor, f"SELECT * FROM {where.quoted} WHERE 1 = 0")
            present = {column[0].lower() for column in cursor.description}
    except QueueTableError as exc:
        return [checks.Error(str(exc), id="dbmail.E011")]
    missing = [c for c in COLUMNS if c not in present]
    if missing:
        return [checks.Error(f"{where.describe()} has no column {', '.join(missing)}", id="dbmail.E011")]
    return []
