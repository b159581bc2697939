"""Our own tracking header: every outbound email names itself, whatever its Message-ID became.

The send path writes it (dbmail.send.message, dbmail.send.mime) and tracking
reads it back from MTA callbacks and provider events; this module is all
either needs, so building a message never loads the tracking applier. The
value is signed, so a forged or mistyped one names no email.
"""

import functools

from django.conf import settings
from django.core import signing

TRACKING_HEADER = "X-Mailsite-Email"
# The same value as anymail metadata, which email service providers echo back in their events.
METADATA_KEY = "mailsite_email"
_SALT = "dbmail.tracking"


def tracking_id(email_pk):
    """The signed value of the X-Mailsite-Email header for one email."""
    return _signer(settings.SECRET_KEY).sign(str(email_pk))


@functools.lru_cache(maxsize=4)
def _signer(secret_key):
    # One Signer per key, not one per message (the send path signs every email it sends).
    return signing.Signer(key=secret_key, salt=_SALT)


def email_pk_from_tracking_id(value):
    """The email's primary key, or None when the value is malformed or forged."""
    try:
        return int(signing.Signer(salt=_SALT).unsign(value))
    except (signing.BadSignature, ValueError, TypeError):
        return None
