"""Which addresses are the site's own, and in which domains.

A list's pattern matches a local part in any domain (unless it matches the
full address), so the domain decides whether an address is ours: without
that test a catch-all list (`.*`) would make every outside address look like
one of ours, and nobody outside would ever get a notice. The domains the
site answers for ("routed" here) are:

- MAILGATE_LIST_DOMAINS: where the lists live (what the MTA hands the gate);
- DBMAIL_VERP_DOMAIN;
- the domains of the site's own addresses (DEFAULT_FROM_EMAIL, SERVER_EMAIL,
  DBMAIL_UNSUBSCRIBE_MAILTO);
- the domains of the sender accounts staff manage (not of a user's mailbox
  account's mirror: a user's provider is not ours).

Without MAILGATE_LIST_DOMAINS the list domains are unknown and taken to be
the routed ones; where guessing wrong would let a user take a list's address
(mailgate.mailboxes.identity), every domain counts instead.
"""

from email.utils import parseaddr

from dbmail.conf import settings as dbmail_conf
from dbmail.content import tokens, verp
from dbmail.intake import outbox
from dbmail.models import SenderAccount
from mailgate.conf import settings as conf
from mailgate.gate import routing


def normalise(address):
    return (address or "").strip().lower()


def domain_of(address):
    return normalise(address).rpartition("@")[2]


def site_addresses():
    """dbmail's own addresses (outbox.site_addresses) and the unsubscribe address."""
    return outbox.site_addresses() | {parseaddr(dbmail_conf.DBMAIL_UNSUBSCRIBE_MAILTO)[1].lower()}


def is_site_address(address):
    """The site's own From and server addresses, the unsubscribe address (any +token) and VERP addresses."""
    address = normalise(address)
    return address in site_addresses() or verp.is_verp_address(address) or tokens.mailto_token(address) is not None


def staff_senders():
    """Sender accounts staff manage: every one that does not mirror a user's mailbox account."""
    return SenderAccount.objects.filter(mailbox=False)


def routed_domains():
    domains = set(conf.MAILGATE_LIST_DOMAINS)
    if dbmail_conf.DBMAIL_VERP_DOMAIN:
        domains.add(dbmail_conf.DBMAIL_VERP_DOMAIN.lower())
    domains |= {domain_of(a) for a in site_addresses()}
    domains |= {domain_of(a) for a in staff_senders().filter(active=True).values_list("address", flat=True)}
    domains.discard("")
    return domains


def list_for(address, *, assume_any_domain=False):
    """The active list mail to `address` reaches, when its domain is a list domain; else None."""
    domains = set(conf.MAILGATE_LIST_DOMAINS)
    if not domains and not assume_any_domain:
        domains = routed_domains()
    if domains and domain_of(address) not in domains:
        return None
    return routing.find_list(normalise(address))[0]


def own_address(address):
    """True for the site's own addresses: site addresses, staff sender accounts and lists, in routed domains."""
    address = normalise(address)
    if is_site_address(address):
        return True
    if domain_of(address) not in routed_domains():
        return False
    if staff_senders().filter(address__iexact=address).exists():
        return True
    return list_for(address) is not None
