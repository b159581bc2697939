"""VERP: a per-email envelope sender, so a bounce names the email it is about.

    bounces+<message-id left part>.<signature>@<DBMAIL_VERP_DOMAIN>

The left part of the email's own Message-ID identifies the TextOfEmail; the
signature (an HMAC of it under SECRET_KEY, lower-case base32 because MTAs may
fold the case of local parts) makes the address unforgeable, so nobody can
mark someone else's mail as bounced. Off while DBMAIL_VERP_DOMAIN is empty:
the envelope sender is then the From address, as without VERP.
"""

import base64
import hmac
import re

from django.utils.crypto import salted_hmac

from dbmail.conf import settings as conf
from dbmail.content import domains, headers

_SALT = "dbmail.verp"
_LEFT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SIG_LENGTH = 12  # 60 bits: each forgery attempt costs an email
_MAX_LOCAL = 64  # RFC 5321


def enabled():
    return bool(conf.DBMAIL_VERP_DOMAIN)


def _left_part(message_id):
    return (message_id or "").strip().strip("<>").rpartition("@")[0]


def _signature(left):
    digest = salted_hmac(_SALT, left, algorithm="sha256").digest()
    return base64.b32encode(digest).decode("ascii")[:_SIG_LENGTH].lower()


def envelope_sender(message_id, default):
    """The VERP address for an email with `message_id`, or `default` when VERP is off or cannot encode it."""
    if not enabled():
        return default
    left = _left_part(message_id)
    if not _LEFT.fullmatch(left):
        return default
    local = f"{conf.DBMAIL_VERP_PREFIX}+{left}.{_signature(left)}"
    if len(local) > _MAX_LOCAL:
        return default
    return f"{local}@{conf.DBMAIL_VERP_DOMAIN}"


def is_verp_address(address):
    """True for any address in the VERP form (signed correctly or not)."""
    if not enabled():
        return False
    local, at, domain = (address or "").strip().rpartition("@")
    return (
        bool(at)
        and domain.lower() == conf.DBMAIL_VERP_DOMAIN.lower()
        and (local.lower().startswith(conf.DBMAIL_VERP_PREFIX.lower() + "+"))
    )


def decode(address):
    """The Message-ID left part a VERP address names, or None if it is not one of ours or is forged."""
    if not is_verp_address(address):
        return None
    local = address.strip().rpartition("@")[0]
    token = local[len(conf.DBMAIL_VERP_PREFIX) + 1 :]
    left, dot, signature = token.rpartition(".")
    if not dot or not _LEFT.fullmatch(left):
        return None
    if not hmac.compare_digest(signature.lower().encode(), _signature(left).encode()):
        return None
    return left


def find_email(address):
    """The TextOfEmail a VERP address was made for, or None."""
    from dbmail.models import TextOfEmail

    left = decode(address)
    if left is None:
        return None
    # The exact Message-ID in each domain IDs are made in first (index lookups); the prefix scan,
    # which reads the table, only if none matches (a domain no longer among them).
    candidates = (set(domains.sender_domains(include_mailboxes=True)) | {conf.DBMAIL_MESSAGE_ID_DOMAIN}) - {""}
    candidates = {headers.fit_domain(d) for d in candidates}  # as the IDs were made (a long domain shortened)
    exact = TextOfEmail.objects.filter(message_id__in=[f"<{left}@{d}>" for d in sorted(candidates)]).first()
    return exact or TextOfEmail.objects.filter(message_id__startswith=f"<{left}@").first()
