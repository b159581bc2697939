"""Who gets a request: the registry of recipient sets.

A recipient set is a function of the request's JSON parameters that returns
either a queryset of users or an iterable of mappings with an "email" key
(other keys become template variables). Sites add their own::

    from dbmail.content.recipients import recipient_set

    @recipient_set("parents", label="Parents of a class", params_help='{"class": "4b"}')
    def parents(params):
        return User.objects.filter(profile__class_code=params["class"])

Whatever the set returns, `iter_recipients` leaves out inactive users, users
without an address, suppressed addresses and repeated addresses (per chunk, by
mailbox key; the database constraint catches repeats across chunks, in any
spelling, as expansion stores each in its delivery spelling), and yields stable
positions so an interrupted expansion resumes where it stopped.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db import InterfaceError, OperationalError, connection
from django.db.models import QuerySet

from dbmail.content.addresses import error as _address_error
from dbmail.content.addresses import mailbox_key
from dbmail.exceptions import RecipientSetError, UnknownRecipientSet
from dbmail.models import Suppression

_REGISTRY = {}


def _guarded(name, params, step, *args):
    """Run `step(*args)` for recipient set `name`; any error but the database's own becomes a RecipientSetError."""
    try:
        return step(*args)
    except (OperationalError, InterfaceError):
        raise  # the database is unreachable: not the set's fault, the caller retries later
    except (UnknownRecipientSet, RecipientSetError):
        raise
    except Exception as exc:
        raise RecipientSetError(
            f"recipient set {name!r} failed with parameters {_short(params)}: {type(exc).__name__}: {exc}"
        ) from exc


def _positioned(source, start):
    return ((pos, _from_row(row)) for pos, row in enumerate(islice(source, start, None), start))


def _take(rows, n):
    return list(islice(rows, n))


def _short(value, limit=200):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class RecipientSet:
    name: str
    label: str
    func: object
    params_help: str = ""
    # False for a set that reads no parameters: the panel then asks for none. True by default,
    # so a site's set that reads them gets the box whether or not it gives params_help.
    takes_params: bool = True


@dataclass(slots=True)
class Recipient:
    email: str
    name: str = ""
    first_name: str = ""
    last_name: str = ""
    username: str = ""
    user_id: int | None = None
    variables: dict = field(default_factory=dict)
    error: str = ""  # set when the row cannot be mailed; expansion records it as dropped

    @property
    def key(self):
        """The mailbox's key: what repeats and suppressions are judged by (dbmail.content.addresses)."""
        return mailbox_key(self.email)


def recipient_set(name, *, label=None, params_help="", takes_params=True):
    """Register a recipient set under `name` (decorator); `takes_params=False` when it reads none."""

    def register(func):
        label_ = label or name.replace("_", " ").capitalize()
        _REGISTRY[name] = RecipientSet(name, label_, func, params_help, takes_params)
        return func

    return register


def get_set(name):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownRecipientSet(f"No recipient set named {name!r}; known: {', '.join(sorted(_REGISTRY))}.") from None


def registered_sets():
    return sorted(_REGISTRY.values(), key=lambda s: s.label)


def normalise_address(address):
    """Trim and lower-case the domain; the local part is the mailbox owner's business.

    This is the address as the recipient's template variables show it; what it is compared by
    (repeats, suppressions) is its mailbox_key, and a request's email stores it in its
    delivery_spelling (dbmail.content.addresses), so that repeats across chunks meet the
    database's one-email-per-address constraint whatever their spelling.
    """
    local, at, domain = (address or "").strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else (address or "").strip()


def address_error(address):
    """Why `address` cannot be mailed ("" when it can); UTF-8 local parts and IDN domains are valid."""
    return _address_error(address)


def _from_user(user):
    return _recipient(
        user.email,
        getattr(user, "first_name", ""),
        getattr(user, "last_name", ""),
        user.get_username(),
        user.pk,
    )


_USER_VALUES = ("pk", "email", "first_name", "last_name")


def _user_rows(users, chunk_size):
    """(pk, Recipient) per user; plain values rather than model instances where the user model allows."""
    model = users.model
    username = model.USERNAME_FIELD
    try:
        for name in _USER_VALUES[1:]:
            model._meta.get_field(name)
    except FieldDoesNotExist:  # a custom user model without these fields: ask the instances
        return ((user.pk, _from_user(user)) for user in users.iterator(chunk_size=chunk_size))
    values = users.values_list(*_USER_VALUES, username)
    return (
        (pk, _recipient(email, first, last, login, pk))
        for pk, email, first, last, login in values.iterator(chunk_size=chunk_size)
    )


def _recipient(email, first, last, username, user_id):
    email = normalise_address(email)
    return Recipient(
        email=email,
        name=f"{first} {last}".strip(),
        first_name=first,
        last_name=last,
        username=str(username),
        user_id=user_id,
        error=address_error(email),
    )


def _from_row(row):
    if not isinstance(row, Mapping):  # one bad row is recorded as dropped, the rest go on
        return Recipient(email=str(row)[:254], error=f"not a recipient row: {_short(row, 80)}")
    row = dict(row)
    email = normalise_address(str(row.pop("email", "")))
    name = str(row.pop("name", "") or "").strip()
    first = str(row.get("first_name", "") or name.partition(" ")[0])
    last = str(row.get("last_name", "") or name.partition(" ")[2])
    return Recipient(
        email=email,
        name=name or f"{first} {last}".strip(),
        first_name=first,
        last_name=last,
        variables={k: v for k, v in row.items() if isinstance(k, str)},
        error=address_error(email),
    )


def iter_recipients(name, params, after=None, chunk_size=2000, first_chunk_size=None):
    """Yield (last position, [Recipient, ...]) per chunk; pass a position as `after` to resume past it.

    `first_chunk_size` makes the first chunk smaller, so a consumer working in a pipeline
    has something to do sooner.
    """
    func = get_set(name).func
    params = params if params is not None else {}
    if not isinstance(params, dict):
        raise RecipientSetError(f"the parameters of recipient set {name!r} must be a JSON object, not {_short(params)}")
    source = _guarded(name, params, func, params)
    if isinstance(source, QuerySet):

        def users_after():
            users = source.filter(is_active=True).exclude(email="").order_by("pk")
            return users.filter(pk__gt=after) if after is not None else users

        rows = _user_rows(_guarded(name, params, users_after), chunk_size)
    else:
        start = 0 if after is None else after + 1
        rows = _guarded(name, params, _positioned, source, start)

    size = first_chunk_size or chunk_size
    # The set's own code runs as its rows are read: an error there is the set's, in words.
    while chunk := _guarded(name, params, _take, rows, size):
        size = chunk_size
        unique = {}
        for _pos, rcpt in chunk:
            unique.setdefault(mailbox_key(rcpt.email), rcpt)  # rcpt.key, without the property's call
        suppressed = _suppressed(list(unique))
        # The last position is reported even when its row was left out, so the checkpoint moves past it.
        yield chunk[-1][0], [r for key, r in unique.items() if key not in suppressed]


def _suppressed(keys):
    """Which of `keys` (mailbox keys, as the suppression list stores them) are on it."""
    if connection.vendor == "postgresql":
        # One array parameter: the ORM's IN (...) would prepare each of a chunk's thousand values by itself.
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT address FROM {Suppression._meta.db_table} WHERE address = ANY(%s)", [keys])
            return {address for (address,) in cursor.fetchall()}
    return set(Suppression.objects.filter(address__in=keys).values_list("address", flat=True))


def count(name, params):
    """The exact number of distinct, unsuppressed addresses the set resolves to now."""
    seen = set()
    for _, chunk in iter_recipients(name, params):
        seen.update(r.key for r in chunk if not r.error)
    return len(seen)


# --- Built-in sets -------------------------------------------------------------------------


@recipient_set("all_active", label="All active users", takes_params=False)
def all_active(params):
    return get_user_model().objects.all()


@recipient_set("staff", label="Staff", takes_params=False)
def staff(params):
    return get_user_model().objects.filter(is_staff=True)


@recipient_set("groups", label="Users in groups", params_help='{"groups": ["Teachers", "Students"]}')
def groups(params):
    names = params.get("groups") or []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f'"groups" must be a list of group names, not {_short(names)}')
    return get_user_model().objects.filter(groups__name__in=names).distinct()


@recipient_set("addresses", label="Explicit addresses", params_help='{"rows": [{"email": "...", "name": "..."}]}')
def addresses(params):
    rows = params.get("rows") or []
    if not isinstance(rows, list):
        raise ValueError(f'"rows" must be a list of addresses or {{"email": ...}} objects, not {_short(rows)}')
    return ({"email": row} if isinstance(row, str) else row for row in rows)
