"""The domains the site sends mail from, for the DNS checks and for finding an email by its Message-ID.

They are the domains of the site's own addresses (DEFAULT_FROM_EMAIL,
SERVER_EMAIL), of the sender accounts, of the DKIM keys, and whatever other
apps register here: mailgate adds the list domains (a list forward's From is
the list address), since dbmail never imports mailgate.
"""

from django.conf import settings

from dbmail.content.headers import domain_of

_sources = []


def register(source):
    """Add `source`, a callable returning domains, to what sender_domains() reports (idempotent)."""
    if source not in _sources:
        _sources.append(source)


def sender_domains(include_mailboxes=False):
    """The sorted lower-case domains mail goes out from.

    Without `include_mailboxes`, the domains of users' mailbox accounts are
    left out: a user's provider (gmail.com) is not the site's to check.
    """
    from dbmail.models import DkimKey, SenderAccount

    accounts = SenderAccount.objects.all() if include_mailboxes else SenderAccount.objects.filter(mailbox=False)
    domains = {domain_of(a) for a in accounts.values_list("address", flat=True)}
    domains |= {domain_of(settings.DEFAULT_FROM_EMAIL), domain_of(settings.SERVER_EMAIL)}
    domains |= set(DkimKey.objects.values_list("domain", flat=True))
    for source in _sources:
        domains |= {d.strip().lower() for d in source()}
    domains.discard("")
    return sorted(domains)
