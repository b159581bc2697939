"""Envelope recipient -> EmailList -> the addresses mail to it goes to.

Lists are tried in `seq` order; the first whose regex matches wins. A list's
members are the union of its users, its groups' users, its fixed addresses,
its resolver's result and its archive address. Sites register resolvers in
code; a resolver gets the regex match (named and numbered groups)::

    from mailgate.gate.routing import list_resolver

    @list_resolver("class_students", label="A class's students and teachers")
    def class_students(match, email_list):
        code = match.group("code")
        return [*User.objects.filter(profile__class_code=code), "archive@example.org"]

A resolver returns users and/or address strings (or {"email", "name"} mappings).
Inactive users, users without an address and suppressed addresses are left
out; each address appears once. A resolver raises NoSuchAddress when the
matched address names nobody (the built-in `user` resolver does for an
unknown user): the gate then answers as for an address no list matches
(exit 67, or the notice), instead of accepting mail for no one. Recipients never come from the message's
To/Cc/Bcc headers.
"""

from dataclasses import dataclass, field
from email.utils import parseaddr

from django.contrib.auth import get_user_model
from django.db.models import Q

from dbmail.content.addresses import a_label, mailbox_key
from dbmail.content.recipients import address_error, normalise_address
from dbmail.exceptions import AddressError
from dbmail.models import Suppression
from mailgate import resolvers
from mailgate.exceptions import NoSuchAddress
from mailgate.models import EmailList
from mailgate.resolvers import list_resolver, registered_resolvers  # noqa: F401 (sites import them from here)


@dataclass(frozen=True)
class Member:
    address: str
    name: str = ""
    user_id: int | None = None


@dataclass
class Route:
    email_list: EmailList
    recipient: str
    groups: dict = field(default_factory=dict)
    args: tuple = ()
    members: list = field(default_factory=list)

    @property
    def list_address(self):
        return self.recipient

    def is_member(self, address):
        address = (address or "").lower()
        return bool(address) and any(m.address.lower() == address for m in self.members)


def normalise_recipient(address):
    return normalise_address(parseaddr(address or "")[1] or (address or "")).strip("<>")


def find_list(recipient):
    """(EmailList, re.Match) for the first active list matching `recipient`, or (None, None)."""
    for email_list in EmailList.objects.filter(active=True).order_by("seq", "id"):
        match = email_list.match(recipient)
        if match:
            return email_list, match
    return None, None


def routable(recipient):
    """The envelope recipient with its domain in A-labels, as lists are matched and written; None if it has none.

    A list's pattern reads only the local part by default, so without this an
    envelope domain that is no domain at all (8-bit junk, U+FFFD, a label of
    200 characters) was routed and became the From and the Message-ID domain
    of the forwards, which then could not be written or stored.
    """
    local, at, domain = normalise_recipient(recipient).rpartition("@")
    try:
        address = f"{local}@{a_label(domain)}" if at and local and domain else ""
    except (AddressError, UnicodeError):
        return None
    return address if address and not address_error(address) else None


def route(recipient):
    """The Route for an envelope recipient, members resolved; None when no list matches or its resolver finds nobody."""
    recipient = routable(recipient)
    if recipient is None:
        return None
    email_list, match = find_list(recipient)
    if email_list is None:
        return None
    try:
        members = resolve_members(email_list, match)
    except NoSuchAddress:
        return None
    return Route(
        email_list=email_list,
        recipient=recipient,
        groups={k: v for k, v in match.groupdict().items() if v is not None},
        args=match.groups(),
        members=members,
    )


def _user_member(user):
    return Member(normalise_address(user.email), user.get_full_name().strip(), user.pk)


def _as_members(items):
    User = get_user_model()
    for item in items or ():
        if isinstance(item, User):
            if item.is_active and item.email:
                yield _user_member(item)
        elif isinstance(item, str):
            name, address = parseaddr(item)
            yield Member(normalise_address(address or item), name)
        elif isinstance(item, dict) and item.get("email"):
            yield Member(normalise_address(item["email"]), item.get("name", ""))


def resolve_members(email_list, match):
    """Every address mail to this list (as matched) goes to, each once, suppressed ones left out."""
    User = get_user_model()
    found = []
    users = (
        User.objects.filter(is_active=True)
        .exclude(email="")
        .filter(Q(email_lists=email_list) | Q(groups__email_lists=email_list))
    )
    found.extend(_user_member(u) for u in users.distinct().order_by("pk"))
    found.extend(_as_members(email_list.address_list()))
    if email_list.resolver:
        resolver = resolvers.get(email_list.resolver)
        if resolver is None:
            raise LookupError(f"list {email_list.name!r} names an unregistered resolver {email_list.resolver!r}")
        found.extend(_as_members(resolver.func(match, email_list)))
    if email_list.archive_address:
        found.extend(_as_members([email_list.archive_address]))

    # One copy per mailbox, however its address is written; a suppression of any spelling leaves it out.
    seen = {}
    for member in found:
        key = mailbox_key(member.address)
        if key in seen or address_error(member.address):
            continue
        seen[key] = member
    suppressed = set(Suppression.objects.filter(address__in=list(seen)).values_list("address", flat=True))
    return [member for key, member in seen.items() if key not in suppressed]


# --- Built-in resolver -----------------------------------------------------------------------


@list_resolver("user", label="A user's own address (group 'user', else the whole local part)")
def user_address(match, email_list):
    username = match.groupdict().get("user") or match.string.rpartition("@")[0] or match.string
    users = list(get_user_model().objects.filter(username__iexact=username, is_active=True))
    if not users:
        raise NoSuchAddress(f"no active user {username!r}")
    return users
