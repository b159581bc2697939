"""Unsubscribe tokens and the headers that carry them (RFC 2369, RFC 8058).

One token per address serves both halves of List-Unsubscribe:

    <https://<site>/unsubscribe/<token>/>                          one-click POST, or a page to confirm
    <mailto:unsubscribe+<token>@<domain>?subject=unsubscribe>      DBMAIL_UNSUBSCRIBE_MAILTO is the base

The token is the first 26 characters of the lower-case base32 (RFC 4648:
a-z and 2-7) of an HMAC-SHA256 of the lower-cased address, keyed by
SECRET_KEY under its own salt: 130 bits nobody can forge, unchanged by the
case folding MTAs apply to local parts, and short enough that `unsubscribe+`
and the token fit the 64 characters of a local part. An address cannot be
read back from a hash, so the token names its address through the
AddressToken table, written when mail carrying it is made (never purged),
and is checked again against the address stored there (SECRET_KEY_FALLBACKS
too, so rotating the key breaks no link). It does not expire: people click
year-old newsletters.

Mail sent before this scheme carries the earlier signed form in its URL
(`<base64 JSON>:<signature>`, django.core.signing, which holds the address
itself); such links keep working. Their mailto named no token and trusted
the envelope sender; the gate no longer acts on it (mailgate.gate.unsubscribe_mail).
"""

import hashlib
import hmac
import re
from email.utils import parseaddr

from django.conf import settings
from django.core import signing
from django.urls import reverse

from dbmail.conf import settings as conf

TOKEN_LENGTH = 26  # base32 characters: 130 bits
_SALT = "dbmail.unsubscribe.address"
_LEGACY_SALT = "dbmail.unsubscribe"  # the django.core.signing tokens of earlier mail
_TOKEN = re.compile(rf"[a-z2-7]{{{TOKEN_LENGTH}}}")


def _key(secret):
    # The key derivation of django.utils.crypto.salted_hmac, done once per maker instead of once per address.
    return hashlib.sha256((_SALT + secret).encode()).digest()


# Lower-case RFC 4648 base32, two characters (ten bits) at a time: expansion makes a token per email,
# and base64.b32encode, written in Python, would cost more than the HMAC itself.
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_B32_PAIRS = [a + b for a in _B32 for b in _B32]


def _keyed(key):
    """HMAC-SHA256 under `key` (RFC 2104) as its two hash states, the key already hashed into each.

    A token is then two copies, two updates and two digests of C objects: what
    hmac.HMAC.copy() does, without its Python wrapper (about 40 % of the cost).
    `key` is a SHA-256 digest (_key): shorter than the block, so it is only padded.
    """
    block = key.ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in block)),
        hashlib.sha256(bytes(b ^ 0x5C for b in block)),
    )


def _token_from(keyed, address):
    inner, outer = keyed[0].copy(), keyed[1].copy()
    inner.update(address.strip().lower().encode())
    outer.update(inner.digest())
    # The first 130 bits of the digest: what base64.b32encode(digest)[:26] spells.
    b = int.from_bytes(outer.digest()[:17], "big") >> (17 * 8 - 5 * TOKEN_LENGTH)  # 130 bits: 13 pairs
    p = _B32_PAIRS
    return (
        p[b >> 120] + p[b >> 110 & 1023] + p[b >> 100 & 1023] + p[b >> 90 & 1023] + p[b >> 80 & 1023]
        + p[b >> 70 & 1023] + p[b >> 60 & 1023] + p[b >> 50 & 1023] + p[b >> 40 & 1023] + p[b >> 30 & 1023]
        + p[b >> 20 & 1023] + p[b >> 10 & 1023] + p[b & 1023]
    )  # fmt: skip


def _token(key, address):
    return _token_from(_keyed(key), address)


def token_for(address):
    """The token for `address` under the current SECRET_KEY (no database access)."""
    return _token(_key(settings.SECRET_KEY), address)


def is_token(text):
    return bool(_TOKEN.fullmatch(text or ""))


def register(pairs):
    """Store (token, address) pairs so the tokens can be read back; already known ones are left as they are."""
    from dbmail.models import AddressToken

    rows = {token: address.strip().lower() for token, address in pairs}
    AddressToken.objects.bulk_create(
        [AddressToken(token=t, address=a) for t, a in rows.items()], ignore_conflicts=True, batch_size=1000
    )


def issue(address):
    """The token for `address`, stored so that it works: for one-off mail (tests, notices)."""
    token = token_for(address)
    register([(token, address)])
    return token


def address_for(token):
    """The address a token (new or earlier form) was made for, or None when it is unknown, malformed or forged."""
    token = (token or "").strip()
    if is_token(token.lower()):
        return _registered_address(token.lower())
    return _legacy_address(token)


def _registered_address(token):
    from dbmail.models import AddressToken

    row = AddressToken.objects.filter(token=token).first()
    if row is None:
        return None
    for secret in (settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS):
        if hmac.compare_digest(_token(_key(secret), row.address), token):
            return row.address
    return None  # a row whose token is not this site's: never trusted


def _legacy_address(token):
    try:
        data = signing.Signer(salt=_LEGACY_SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    address = data.get("a") if isinstance(data, dict) else None
    return address if isinstance(address, str) and "@" in address else None


# --- The mailto half --------------------------------------------------------------------------


def _mailto_base():
    local, _, domain = parseaddr(conf.DBMAIL_UNSUBSCRIBE_MAILTO)[1].lower().rpartition("@")
    return local, domain


def mailto_address(token):
    """unsubscribe+<token>@<domain> for DBMAIL_UNSUBSCRIBE_MAILTO = unsubscribe@<domain>."""
    local, domain = _mailto_base()
    return f"{local}+{token}@{domain}"


def mailto_token(recipient):
    """For an envelope recipient: None if it is not the unsubscribe address, else its token ("" if it has none)."""
    local, domain = _mailto_base()
    got_local, at, got_domain = (recipient or "").strip().lower().rpartition("@")
    if not at or not local or got_domain != domain:
        return None
    if got_local == local:
        return ""
    if got_local.startswith(local + "+"):
        return got_local[len(local) + 1 :]
    return None


# --- Links and headers for many addresses -----------------------------------------------------


class LinkMaker:
    """Unsubscribe URLs and headers for many addresses; remembers the tokens it issued until taken.

    The key and the URL's shape are worked out once. Whoever makes the mail
    stores the issued tokens with it (`take_issued`, then `register`), in the
    same transaction, so no mail goes out with a token that does not work.
    """

    def __init__(self):
        self._keyed = _keyed(_key(settings.SECRET_KEY))
        url = conf.DBMAIL_SITE_URL + reverse("dbmail:unsubscribe", args=["TOKEN"])
        self._before, _, self._after = url.partition("TOKEN")
        self._mailto = _mailto_base()
        self.issued = {}

    def make(self, address):
        """(URL, List-Unsubscribe headers) for `address`."""
        token = _token_from(self._keyed, address)
        self.issued[token] = address.strip().lower()
        url = f"{self._before}{token}{self._after}"
        local, domain = self._mailto
        return url, _headers(url, f"{local}+{token}@{domain}")

    def take_issued(self):
        issued, self.issued = self.issued, {}
        return list(issued.items())


def unsubscribe_url(address):
    """The URL for one address, its token stored."""
    return f"{conf.DBMAIL_SITE_URL}{reverse('dbmail:unsubscribe', args=[issue(address)])}"


def list_unsubscribe_headers(url, token):
    return _headers(url, mailto_address(token))


def _headers(url, mailto):
    return {
        "List-Unsubscribe": f"<{url}>, <mailto:{mailto}?subject=unsubscribe>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
