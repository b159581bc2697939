"""Our own tracking header: every outbound email names itself, whatever its Message-ID became.

The send path writes it (dbmail.send.message, dbmail.send.mime) and tracking
reads it back from MTA callbacks and provider events; this module is all
either needs, so building a message never loads the tracking applier. The
value is signed, so a forged or mistyped one names no email.
"""

import base64
import functools
import hashlib
import hmac

from django.conf import settings
from django.core import signing
from django.utils.encoding import force_bytes

TRACKING_HEADER = "X-Mailsite-Email"
# The same value as anymail metadata, which email service providers echo back in their events.
METADATA_KEY = "mailsite_email"
_SALT = "dbmail.tracking"


def tracking_id(email_pk):
    """The signed value of the X-Mailsite-Email header for one email (what signing.Signer.sign makes)."""
    value = str(email_pk)
    mac = _keyed(settings.SECRET_KEY).copy()
    mac.update(value.encode())
    return f"{value}:{base64.urlsafe_b64encode(mac.digest()).rstrip(b'=').decode()}"


@functools.lru_cache(maxsize=4)
def _keyed(secret_key):
    # Signer.sign derives the HMAC key from the salt and the secret for every value; the send path
    # signs every email it sends, so the keyed HMAC is made once and copied for each one.
    # tests/test_tracking_header.py checks the result against Signer's own.
    key = hashlib.sha256(force_bytes(_SALT + "signer") + force_bytes(secret_key)).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def email_pk_from_tracking_id(value):
    """The email's primary key, or None when the value is malformed or forged."""
    try:
        return int(signing.Signer(salt=_SALT).unsign(value))
    except (signing.BadSignature, ValueError, TypeError):
        return None
