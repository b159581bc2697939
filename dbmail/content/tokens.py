"""Signed unsubscribe tokens and the headers that carry them (RFC 2369, RFC 8058).

The token names the address only; it is signed with SECRET_KEY under its own
salt, so it cannot be forged or reused for anything else, and it does not
expire (people click year-old newsletters).
"""

from urllib.parse import quote

from django.core import signing
from django.urls import reverse

from dbmail.conf import settings as conf

_SALT = "dbmail.unsubscribe"


def _signer():
    return signing.Signer(salt=_SALT)


def make_token(address, signer=None):
    """The token for `address`; pass a `signer` (from _signer) to sign many at the cost of one."""
    return (signer or _signer()).sign_object({"a": address.lower()})


def read_token(token):
    """The address a token was made for, or None when it is malformed or tampered with."""
    try:
        data = _signer().unsign_object(token)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    address = data.get("a") if isinstance(data, dict) else None
    return address if isinstance(address, str) and "@" in address else None


class LinkMaker:
    """Unsubscribe URLs for many addresses: the signer and the URL's shape are worked out once."""

    def __init__(self):
        self._signer = _signer()
        url = conf.DBMAIL_SITE_URL + reverse("dbmail:unsubscribe", args=["TOKEN"])
        self._before, _, self._after = url.partition("TOKEN")

    def url(self, address):
        return f"{self._before}{make_token(address, self._signer)}{self._after}"


def unsubscribe_url(address):
    return LinkMaker().url(address)


def list_unsubscribe_headers(url, address):
    mailto = f"mailto:{conf.DBMAIL_UNSUBSCRIBE_MAILTO}?subject={quote('unsubscribe ' + address)}"
    return {
        "List-Unsubscribe": f"<{url}>, <{mailto}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
