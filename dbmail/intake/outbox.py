"""The ad-hoc path (seed 000): the one door for mail that is sent now rather than by dbmail_cron.

    from dbmail.intake.outbox import send_now
    send_now(to="ann@example.org", subject="Your password", text="...")

The email is a TextOfEmail row like any other, with the same log and
statuses. send_now sends once the caller's transaction commits (so a rolled
back view sends nothing); if the SMTP server is down it stays in the queue
and the next dbmail_cron run retries it.

Callers that build their emails themselves (enqueue, then adjust them: list
forwards, mailbox messages, the panel's test mail) hand them to
send_after_commit or send_at_once; no one else calls the send loop's
single-email path.
"""

import functools
import re
from datetime import datetime
from email.utils import formataddr, parseaddr

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.utils import timezone

from dbmail import prepared, states
from dbmail.conf import settings as conf
from dbmail.content import recipients, rendering, verp
from dbmail.content.addresses import mailbox_key
from dbmail.exceptions import UnknownSender
from dbmail.models import DeliveryEvent, SenderAccount, Suppression, TextOfEmail
from dbmail.send import destinations
from dbmail.send.loop import send_one_now

# A bare ASCII address, which email.utils.parseaddr would give back as it is, with no name.
_BARE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


def _parseaddr(text):
    """email.utils.parseaddr(text), without its parser for the common bare address (tests/test_outbox.py)."""
    return ("", text) if _BARE.fullmatch(text) else parseaddr(text)


def site_addresses():
    """The site's own addresses (DEFAULT_FROM_EMAIL, SERVER_EMAIL), lower-case: they send without a sender account."""
    return {parseaddr(a or "")[1].strip().lower() for a in (settings.DEFAULT_FROM_EMAIL, settings.SERVER_EMAIL)}


def resolve_sender(from_email=None):
    """(account or None, From header, address) for `from_email`, refusing unconfigured senders."""
    from_email = from_email or settings.DEFAULT_FROM_EMAIL
    name, address = _parseaddr(from_email)
    address = address.lower()
    account = _active_account(address)
    if account:
        return account, (formataddr((name, address)) if name else account.from_header), address
    if address in site_addresses():
        return None, from_email, address
    raise UnknownSender(f"{address!r} is not a configured sender account")


def _active_account(address):
    """The active sender account of `address`, or None: one plain query (enqueue runs thousands a second)."""
    sql, names = _account_statement(connection.vendor)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            prepared.execute(cursor, "dbmail_active_account", sql, [address])
        else:
            cursor.execute(sql, [address])
        row = cursor.fetchone()
    return SenderAccount.from_db(connection.alias, names, row) if row else None


@functools.cache
def _account_statement(vendor):
    fields = SenderAccount._meta.concrete_fields
    quote = connection.ops.quote_name
    sql = (
        f"SELECT {', '.join(quote(f.column) for f in fields)} FROM {quote(SenderAccount._meta.db_table)} "
        f"WHERE {quote('address')} = {'$1' if vendor == 'postgresql' else '%s'} AND {quote('active')} LIMIT 1"
    )
    return sql, [f.attname for f in fields]


def enqueue(
    to,
    subject="",
    text="",
    html="",
    *,
    from_email=None,
    reply_to="",
    headers=None,
    raw_message=None,
    envelope_sender=None,
    user=None,
    send_at=None,
    message_id=None,
    from_header=None,
):
    """Create one queued email (a dropped one, with the reason, if `to` is not an address or gets no mail).

    An address suppressed for a hard bounce, a complaint or by hand gets no
    mail at all: the email is made dropped, its reason naming the suppression
    ("suppressed: hard bounce on 2026-11-30"). An unsubscribe does not stop it.

    A `raw_message` carries its own headers: pass the `message_id` written in
    it, and the `from_header` it shows if that differs from `from_email` (a
    list forward's From is the list; the account sending it is `from_email`).
    """
    db = connections[DEFAULT_DB_ALIAS]  # looked up once: each use of django.db.connection looks it up again
    fast = db.vendor == "postgresql"
    key = (from_email or settings.DEFAULT_FROM_EMAIL, settings.DEFAULT_FROM_EMAIL, settings.SERVER_EMAIL)
    sender = _senders.get(key) if fast else None
    if sender is None:
        sender = _Sender.of(*resolve_sender(from_email))
    message_id = message_id or rendering.new_message_id(sender.address)
    name, address = _parseaddr(to)
    address = recipients.normalise_address(address or to)
    now = timezone.now()
    if html and not text:
        text = rendering.html_to_text(html)
    email = _new_email(
        {
            "account_id": sender.account_id,
            "to_address": address[:254],
            "to_name": name[:200],
            "dest_group": destinations.group_of(address),
            "from_header": from_header or sender.from_header,
            "envelope_sender": envelope_sender or verp.envelope_sender(message_id, sender.address),
            "reply_to": reply_to,
            "subject": " ".join(subject.split())[:998],
            "text": text,
            "html": html,
            "headers": headers or {},
            "raw_message": raw_message,
            "message_id": message_id,
            # status: the model's default, states.ENQUEUE.target
            "status_changed_at": now,
            "next_attempt_at": send_at or now,
            "created_at": now,
        },
        user,
    )
    error = recipients.address_error(address)
    if fast and not error:
        if _insert_checked(db, email, sender, address):
            _senders.remember(key, sender)
            return email
    if fast:
        # The sender account changed, or the address is suppressed or refused (a refused email is inserted
        # without the checked statement, so the guess must not be trusted either): ask again, as a first call does.
        _senders.forget(key)
        sender = _Sender.of(*resolve_sender(from_email))
        email.account_id, email.from_header = sender.account_id, from_header or sender.from_header
    error = error or _suppressed(address)
    if error:
        email.status, email.last_error = states.REFUSE.target, error
    _insert(email)
    if error:
        DeliveryEvent.objects.create(email=email, kind=DeliveryEvent.Kind.ADMIN, outcome=email.status, text=error)
    return email


def _new_email(columns, user=None):
    """TextOfEmail(user=user, **columns), `columns` by attribute name, without the ORM's keyword path.

    Model.__init__ looks each keyword up among the fields and asks every other field for its
    default, one by one: a quarter of enqueue's own time. Values in the fields' order (the path
    the ORM takes for the rows it reads) skip that; the model's signals are sent all the same.
    The account goes by its id only: a web view that reads email.account gets it fresh.
    """
    email = TextOfEmail(
        *[columns.get(name, default) if default is not _PER_ROW else columns[name] for name, default in _defaults()]
    )
    if user is not None:
        email.user = user  # as the keyword would: refused unless a user, and kept for email.user
    return email


_PER_ROW = object()
# The columns enqueue gives each email (_new_email's keys, and the user's); the others take their defaults.
_GIVEN = frozenset(
    "account_id user_id to_address to_name dest_group from_header envelope_sender reply_to subject text html headers "
    "raw_message message_id status_changed_at next_attempt_at created_at".split()
)


@functools.cache
def _defaults():
    """[(attribute name, default)] of TextOfEmail's fields in their order; _PER_ROW: enqueue must give it."""
    defaults = []
    for field in TextOfEmail._meta.concrete_fields:
        default = _PER_ROW if field.has_default() and callable(field.default) else field.get_default()
        defaults.append((field.attname, default))
    return defaults


class _Sender(tuple):
    """What enqueue takes of the sender: (account id or None, its display name, From header, address)."""

    __slots__ = ()

    @classmethod
    def of(cls, account, from_header, address):
        return cls((account.pk if account else None, account.display_name if account else None, from_header, address))

    account_id = property(lambda self: self[0])
    display_name = property(lambda self: self[1])
    from_header = property(lambda self: self[2])
    address = property(lambda self: self[3])


class _SenderCache:
    """The senders seen in this process, by (from_email, DEFAULT_FROM_EMAIL, SERVER_EMAIL).

    Only a guess: each INSERT checks, in the same statement, that the account is
    still the active one of that address with that name (or that there is none,
    for the site's own addresses), so a deactivated or renamed account takes
    effect at the next call on every host. A guess that fails is asked again.
    """

    LIMIT = 256  # from_email values a process sees: a handful; the bound is for a caller passing many

    def __init__(self):
        self._rows = {}

    def get(self, key):
        return self._rows.get(key)

    def remember(self, key, sender):
        if key not in self._rows:
            if len(self._rows) >= self.LIMIT:
                self._rows.clear()
            self._rows[key] = sender

    def forget(self, key):
        self._rows.pop(key, None)


_senders = _SenderCache()


def _insert_checked(db, email, sender, address):
    """Insert `email` if its sender is still as guessed and `address` is not suppressed; whether it was.

    One statement and one round trip (with SET LOCAL in autocommit): the sender
    check, the suppression check and the INSERT ... RETURNING, which PostgreSQL
    runs in one snapshot. Nothing is written when either check fails.
    """
    sql, fields = _checked_insert_statement()
    values = _values(email, fields, db)
    values += [mailbox_key(address), sender.address, sender.display_name]
    row = prepared.fetchone(db, "dbmail_enqueue_checked", sql, values, prefix=_prefix(db))
    if row is None:
        return False
    email.pk = row[0]
    email._state.adding = False
    email._state.db = db.alias
    return True


def _values(email, fields, db):
    values = []
    row = email.__dict__  # a new email's field values by attribute name: no descriptor lookup for each
    for field, as_is in fields:
        value = row[field.attname]
        # A value of a type psycopg2 sends exactly as the ORM would prepare it goes as it is; anything else
        # (JSON, a lazy string, a naive date the ORM warns about) as the ORM prepares it. Two exceptions
        # for what psycopg2's adapters make slowly, sent as the same text: an aware date as its ISO form
        # (with its offset: the same instant), an empty JSON object as {} (a quarter of the row's cost).
        kind = type(value)
        if kind in as_is and (kind is not datetime or value.tzinfo is not None):
            values.append(value.isoformat() if kind is datetime else value)
        elif kind is dict and not value and _EMPTY_OBJECT in as_is:
            values.append("{}")
        else:
            values.append(field.get_db_prep_save(value, db))
    return values


def _prefix(db):
    if conf.DBMAIL_ASYNC_ENQUEUE and not db.in_atomic_block:
        # One round trip: in autocommit, a multi-statement query is one transaction, and SET LOCAL holds for it.
        return "SET LOCAL synchronous_commit TO OFF; "
    return ""


def _insert(email):
    """Save a new email with one INSERT ... RETURNING, as bulk_create would (no model signals).

    Model.save() would spend more time preparing the statement than PostgreSQL spends running
    it. In autocommit (a web view's password reset), with DBMAIL_ASYNC_ENQUEUE, the commit does
    not wait for the WAL flush: see docs/scaling.md for what that trades. Inside a caller's
    transaction, the caller's commit decides.
    """
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        email.save(force_insert=True)
        return
    sql, fields = _insert_statement()
    email.pk = prepared.fetchone(db, "dbmail_enqueue", sql, _values(email, fields, db), prefix=_prefix(db))[0]
    email._state.adding = False
    email._state.db = db.alias


_NONE = type(None)
_EMPTY_OBJECT = object()  # in _as_is: an empty dict goes as the text {}


def _insert_fields():
    """[(field, the types of its values that need no preparing)] of every column enqueue writes."""
    return [(f, _as_is(f)) for f in TextOfEmail._meta.concrete_fields if not f.primary_key]


def _as_is(field):
    if field.is_relation:
        return (int, _NONE)  # the related row's id
    if isinstance(field, (models.CharField, models.TextField, models.IntegerField)):
        return (str, int, _NONE)
    if isinstance(field, models.DateTimeField):
        return (datetime, _NONE)  # an aware one (_values): PostgreSQL's backend sends those unchanged
    if isinstance(field, models.JSONField):
        return (_EMPTY_OBJECT,)  # None is JSON null or SQL NULL by the field's rules: always the ORM's way
    return (_NONE,)


@functools.cache  # on PostgreSQL only (_insert)
def _insert_statement():
    """(INSERT ... RETURNING id with $n parameters, _insert_fields())."""
    quote = connection.ops.quote_name
    fields = _insert_fields()
    sql = (
        f"INSERT INTO {quote(TextOfEmail._meta.db_table)} ({', '.join(quote(f.column) for f, _ in fields)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(fields) + 1))}) RETURNING {quote(TextOfEmail._meta.pk.column)}"
    )
    return sql, fields


@functools.cache  # on PostgreSQL only (_insert_checked)
def _checked_insert_statement():
    """(INSERT ... SELECT ... WHERE <the sender as guessed, the address not suppressed> RETURNING id, fields).

    `fields` are the columns sent as parameters, in order; after them come three more: the
    recipient's mailbox key (what the suppression list stores), the sender's address and its display name. The email's
    account_id is the guessed account (NULL: none). The columns enqueue does not give
    (_fixed_columns) are written as constants, not sent with each email.
    """
    quote = connection.ops.quote_name
    fixed = _fixed_columns()
    fields = [(f, as_is) for f, as_is in _insert_fields() if f.attname not in fixed]
    n = len(fields)
    params = {f.attname: f"${i}" for i, (f, _) in enumerate(fields, 1)}
    to, address, display_name = (f"${n + i}" for i in range(1, 4))
    account_type = SenderAccount._meta.pk.db_type(connection)
    account = f"{params['account_id']}::{account_type}"
    reasons = ", ".join(f"'{reason}'" for reason in Suppression.STOPS_ALL_MAIL)
    accounts, suppressions = quote(SenderAccount._meta.db_table), quote(Suppression._meta.db_table)
    columns = [f for f, _ in _insert_fields()]
    sql = (
        f"INSERT INTO {quote(TextOfEmail._meta.db_table)} ({', '.join(quote(f.column) for f in columns)}) "
        f"SELECT {', '.join(fixed.get(f.attname) or params[f.attname] for f in columns)} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {suppressions} WHERE address = {to}::text AND reason IN ({reasons})) "
        # No active account of the address other than the guessed one, with the guessed name ...
        f"AND NOT EXISTS (SELECT 1 FROM {accounts} WHERE address = {address}::text AND active "
        f"AND (id, display_name) IS DISTINCT FROM ({account}, {display_name}::text)) "
        # ... and the guessed one (if any) still there and active.
        f"AND ({account} IS NULL OR EXISTS (SELECT 1 FROM {accounts} "
        f"WHERE id = {account} AND address = {address}::text AND active)) "
        f"RETURNING {quote(TextOfEmail._meta.pk.column)}"
    )
    return sql, fields


def _fixed_columns():
    """{attribute name: SQL literal} of the columns every email of enqueue's checked INSERT has at their default.

    Those enqueue does not give (its status, attempts, lease, last error...): new and queued
    on that path, always. psycopg2 adapts each parameter in Python (1-2 µs each, a third of
    a call's CPU), so constants are written once, in the prepared statement.
    """
    fixed = {}
    for name, default in _defaults():
        if name in _GIVEN or default is _PER_ROW or name == TextOfEmail._meta.pk.attname:
            continue
        if default is None:
            fixed[name] = "NULL"
        elif type(default) is int:
            fixed[name] = str(default)
        elif isinstance(default, str) and default.isalnum() or default == "":
            fixed[name] = f"'{default}'"  # letters and digits only: nothing to quote
    return fixed


def _suppressed(address):
    # A hard bounce, a complaint or a block stops even this mail; an unsubscribe stops bulk mail only,
    # which never reaches here for an unsubscribed address (its recipients leave them out).
    if connection.vendor != "postgresql" or not address:
        row = Suppression.stopping_all_mail([address]).get(mailbox_key(address))
        return row.refusal() if row else ""
    # What stopping_all_mail asks, as one prepared statement: it runs for every email enqueued.
    sql, names = _suppression_statement()
    with connection.cursor() as cursor:
        prepared.execute(cursor, "dbmail_suppressed", sql, [mailbox_key(address)])
        row = cursor.fetchone()
    return Suppression.from_db(connection.alias, names, row).refusal() if row else ""


@functools.cache  # on PostgreSQL only (_suppressed)
def _suppression_statement():
    quote = connection.ops.quote_name
    fields = Suppression._meta.concrete_fields
    reasons = ", ".join(f"'{reason}'" for reason in Suppression.STOPS_ALL_MAIL)
    sql = (
        f"SELECT {', '.join(quote(f.column) for f in fields)} FROM {quote(Suppression._meta.db_table)} "
        f"WHERE {quote('address')} = $1 AND {quote('reason')} IN ({reasons})"
    )
    return sql, [f.attname for f in fields]


def send_now(to, subject="", text="", html="", **kwargs):
    """Enqueue one email and send it as soon as the current transaction commits."""
    email = enqueue(to, subject, text, html, **kwargs)
    send_after_commit([email])
    return email


def send_after_commit(emails, *, robust=False):
    """Send each still queued email of `emails` once the current transaction commits (at once outside one).

    A rolled back transaction sends nothing. With `robust`, a failure while
    sending is logged instead of raised, for callers whose committed work must
    stand whatever happens after it (the gate answering the MTA).
    """
    for email in emails:
        if email.status == states.EmailStatus.QUEUED:
            # A lambda, not functools.partial: robust on_commit logs the callback's __qualname__.
            transaction.on_commit(lambda email=email: send_one_now(email), robust=robust)


def send_at_once(emails):
    """Send each still queued email of `emails` now, in this process; the emails are refreshed in place.

    For callers whose emails are already committed and who want the outcome
    before they go on (a mailbox message mirrors its copies' statuses).
    """
    for email in emails:
        if email.status == states.EmailStatus.QUEUED:
            send_one_now(email)
    return emails
