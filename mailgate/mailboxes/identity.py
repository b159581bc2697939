"""Who a mail account may be, and whether it may send as its address.

An account's address is the From of what it sends. Two rules:

1. It may not be an address the site or someone else already has: the
   site's own addresses (DEFAULT_FROM_EMAIL, SERVER_EMAIL, the unsubscribe
   and VERP addresses), a sender account staff manage, a list's address, or
   another mail account. The account's own mirror sender account
   (MailAccount.sender, made fresh for it, or the switched-off mirror of a
   deleted account with that address, which holds no login any more) is the
   only one it ever writes.
2. It sends as that address either through its own SMTP server with its own
   login (smtp_auth on and a host set: that server accepts only what the
   login may send as, so the send itself proves the address), or through the
   site's own server (blank host, or smtp_auth off) only with a send grant
   from staff (dbmail.intake.grants): the site's server trusts the site and
   checks no From at all.
"""

from dbmail.intake import grants
from dbmail.models import SenderAccount
from mailgate.conf import settings as conf
from mailgate.gate import addresses
from mailgate.models import MailAccount


def address_refusal(address, account=None):
    """Why `address` cannot be `account`'s (a new account when None); "" when it can."""
    address = addresses.normalise(address)
    if addresses.is_site_address(address):
        return "This is the site's own address; it cannot be a mail account's."
    senders = SenderAccount.objects.filter(address__iexact=address)
    if account is not None and account.sender_id:
        senders = senders.exclude(pk=account.sender_id)
    if senders.filter(mailbox=False).exists():
        return "This address is a sender account managed by staff; ask them if it should be yours."
    others = MailAccount.objects.filter(address__iexact=address)
    if account is not None and account.pk:
        others = others.exclude(pk=account.pk)
    if others.exists() or senders.filter(mail_account__isnull=False).exists():
        return "This address belongs to another mail account."
    email_list = addresses.list_for(address, assume_any_domain=not conf.MAILGATE_LIST_DOMAINS)
    if email_list is not None:
        return f"This address is the address of the list {email_list.name!r}."
    return ""


def proves_itself(profile):
    """True when the profile's own SMTP server checks each login's addresses (its host, and a login)."""
    return bool(profile.smtp_host) and profile.smtp_auth


def sending_refusal(account):
    """Why `account` may not send as its address now; "" when it may."""
    if proves_itself(account.profile):
        return ""
    if grants.may_send_as(account.owner, account.address):
        return ""
    server = "the site's own mail server" if not account.profile.smtp_host else "a server without a login"
    whose = f"user {account.owner}" if account.owner_id else "an account without an owner"
    return (
        f"Sending as {account.address} through {server} needs a send grant from staff for {whose} "
        "(or a profile with its own SMTP server and login)."
    )
