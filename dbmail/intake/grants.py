"""Who may send, and as whom: composing requests (the comm panel and the sending API), and send grants.

Composing: a user may compose requests and send through the sending API if
they may add message requests, or (with DBMAIL_PANEL_ALL_STAFF, the default)
are staff; they send as the sender accounts staff manage (never the mirror of
someone's mailbox account, whose server and login are its owner's).

Send grants (SendGrant), for sending as an address through the site's own mail server:

The site's server (EMAIL_* settings) relays whatever the site hands it, so a
From address is never taken from whoever asks: a user sends as an address
only if staff granted it to them, or to a group they are in, as that exact
address or as its whole domain (`@example.org`; subdomains are other
domains). There is no implicit grant, for staff or superusers either.
"""

from django.db.models import Q

from dbmail.conf import settings as conf
from dbmail.models import SenderAccount, SendGrant

COMPOSE_PERMISSION = "dbmail.add_messagerequest"


def may_compose(user):
    """The permission decides; with DBMAIL_PANEL_ALL_STAFF (the default) being staff is enough too."""
    if user is None or not user.is_active:
        return False
    return user.has_perm(COMPOSE_PERMISSION) or (conf.DBMAIL_PANEL_ALL_STAFF and user.is_staff)


def request_senders():
    """The sender accounts a request (comm panel or API) may be sent from: staff's active ones."""
    return SenderAccount.objects.filter(active=True, mailbox=False)


def normalise(address):
    return (address or "").strip().lower()


def grant_for(user, address):
    """The grant that lets `user` send as `address`, or None."""
    address = normalise(address)
    domain = address.rpartition("@")[2]
    if user is None or not user.is_active or not domain:
        return None
    holder = Q(user=user) | Q(group__in=user.groups.all())
    return SendGrant.objects.filter(holder, address__in=[address, f"@{domain}"]).order_by("id").first()


def may_send_as(user, address):
    return grant_for(user, address) is not None


def grants_of(user):
    """Every grant `user` holds, directly or through a group."""
    return SendGrant.objects.filter(Q(user=user) | Q(group__in=user.groups.all())).distinct()
