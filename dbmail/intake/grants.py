"""Who may send as which address through the site's own mail server: staff grant it (SendGrant).

The site's server (EMAIL_* settings) relays whatever the site hands it, so a
From address is never taken from whoever asks: a user sends as an address
only if staff granted it to them, or to a group they are in, as that exact
address or as its whole domain (`@example.org`; subdomains are other
domains). There is no implicit grant, for staff or superusers either.
"""

from django.db.models import Q

from dbmail.models import SendGrant


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
