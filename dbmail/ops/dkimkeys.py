"""DKIM keys: make, rotate and retire them, and write the DNS record each needs.

A domain has at most two published (active) keys at once, so a key can be
rotated without a gap: `rotate` makes a new one, which signs from then on,
while the old one stays published for mail already on its way; once the new
record is in DNS and a few days have passed, `retire` the old one and remove
its record. dbmail.send.dkim signs with the newest active key of the From
domain.

The private key is made here and stored; it is never returned by anything
that prints or renders (the admin, dbmail_dkim). RSA keys are 2048 bits by
default (RFC 8301 asks for at least 1024; 2048 is what receivers expect).
"""

import base64
import re
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from dbmail.content import addresses
from dbmail.exceptions import AddressError, DkimError
from dbmail.models import DkimKey

MAX_ACTIVE = 2
RSA_BITS = (1024, 2048, 3072, 4096)
ALGORITHMS = {"rsa": DkimKey.Algorithm.RSA, "ed25519": DkimKey.Algorithm.ED25519}
_DOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
_SELECTOR = re.compile(r"(?=.{1,63}$)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_TXT_STRING = 255  # bytes in one character-string of a TXT record (RFC 1035 3.3)


def clean_domain(domain):
    """`domain` lower-case, an international one in A-labels (xn--...), as DKIM's d= and DNS have it."""
    domain = (domain or "").strip().lower().rstrip(".")
    try:
        domain = addresses.a_label(domain)
    except AddressError:
        raise DkimError(f"{domain!r} is not a domain name") from None
    if not _DOMAIN.fullmatch(domain):
        raise DkimError(f"{domain!r} is not a domain name")
    return domain


def clean_selector(selector):
    selector = (selector or "").strip().lower()
    if not _SELECTOR.fullmatch(selector):
        raise DkimError(f"{selector!r} is not a selector (letters, digits and hyphens, at most 63 characters)")
    return selector


def algorithm_of(name):
    try:
        return ALGORITHMS[name.lower().removesuffix("-sha256")]
    except (KeyError, AttributeError):
        raise DkimError(f"{name!r} is not an algorithm (rsa or ed25519)") from None


@dataclass(frozen=True)
class KeyMaterial:
    private_key: str  # dkimpy's format: PKCS#1 PEM for RSA, the base64 seed for Ed25519
    public_key: str  # the DNS record's p= value


def new_key_material(algorithm, bits=2048):
    """A fresh key pair for `algorithm` (a DkimKey.Algorithm)."""
    if algorithm == DkimKey.Algorithm.ED25519:
        import nacl.signing

        signing = nacl.signing.SigningKey.generate()
        return KeyMaterial(
            base64.b64encode(bytes(signing)).decode("ascii"),
            base64.b64encode(bytes(signing.verify_key)).decode("ascii"),
        )
    if bits not in RSA_BITS:
        raise DkimError(f"{bits} is not a key size for RSA (one of {', '.join(map(str, RSA_BITS))})")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyMaterial(private.decode("ascii"), base64.b64encode(public).decode("ascii"))


def active_keys(domain):
    """The domain's published keys, newest (the one that signs) first."""
    return list(DkimKey.objects.filter(domain=domain, active=True).order_by("-created_at", "-id"))


def _default_selector(domain, algorithm, now):
    base = f"{'e' if algorithm == DkimKey.Algorithm.ED25519 else 's'}{timezone.localdate(now):%Y%m}"
    taken = set(DkimKey.objects.filter(domain=domain, selector__startswith=base).values_list("selector", flat=True))
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def can_add(domain, selector=None, published=None):
    """Raise DkimError if `domain` (clean) cannot have another key, or none under `selector`."""
    published = active_keys(domain) if published is None else published
    if len(published) >= MAX_ACTIVE:
        names = ", ".join(k.selector for k in published)
        raise DkimError(
            f"{domain} already has {len(published)} published keys ({names}): "
            f"retire the older one first (dbmail_dkim retire {domain} {published[-1].selector})"
        )
    if selector is not None:
        selector = clean_selector(selector)
        if DkimKey.objects.filter(domain=domain, selector=selector).exists():
            raise DkimError(f"{domain} already has a key with selector {selector!r}: choose another")
    return selector


def generate(domain, selector=None, algorithm="rsa", bits=2048, now=None):
    """Make, store and return a new key for `domain`; it signs the domain's mail from now on.

    Raises DkimError naming the problem: a bad domain, selector, algorithm or
    size, a selector already used for the domain, or two keys already published.
    """
    domain = clean_domain(domain)
    algorithm = algorithm_of(algorithm)
    now = now or timezone.now()
    with transaction.atomic():
        # Two commands at once cannot pass the limit together: each locks the published keys (with
        # none yet, both may add one, and two is the limit).
        published = list(
            DkimKey.objects.select_for_update().filter(domain=domain, active=True).order_by("-created_at", "-id")
        )
        selector = can_add(domain, selector or None, published) or _default_selector(domain, algorithm, now)
        material = new_key_material(algorithm, bits)
        try:
            with transaction.atomic():
                return DkimKey.objects.create(
                    domain=domain,
                    selector=selector,
                    algorithm=algorithm,
                    private_key=material.private_key,
                    public_key=material.public_key,
                    created_at=now,
                )
        except IntegrityError:
            raise DkimError(f"{domain} already has a key with selector {selector!r}: choose another") from None


def rotate(domain, now=None):
    """A new key like the domain's current one (algorithm, size), which signs from now on; the old stays published."""
    domain = clean_domain(domain)
    published = active_keys(domain)
    if not published:
        raise DkimError(f"{domain} has no published key to rotate: make one (dbmail_dkim generate {domain})")
    current = published[0]
    return generate(domain, algorithm=current.algorithm, bits=key_bits(current) or 2048, now=now)


def retire(domain, selector, now=None):
    """Stop publishing (and signing with) a key; returns it. Its DNS record can then be removed."""
    domain, selector = clean_domain(domain), clean_selector(selector)
    key = DkimKey.objects.filter(domain=domain, selector=selector).first()
    if key is None:
        raise DkimError(f"{domain} has no key with selector {selector!r}")
    if not key.active:
        raise DkimError(f"{key} was already retired on {timezone.localdate(key.retired_at):%Y-%m-%d}")
    key.active, key.retired_at = False, now or timezone.now()
    key.save(update_fields=["active", "retired_at"])
    return key


def key_bits(key):
    """The RSA modulus size of `key` in bits (None for Ed25519)."""
    if key.algorithm != DkimKey.Algorithm.RSA:
        return None
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    return load_der_public_key(base64.b64decode(key.public_key)).key_size


# --- the DNS record ---


def record_name(key):
    return f"{key.selector}._domainkey.{key.domain}"


def txt_value(key):
    """The record's text, as one string: `v=DKIM1; k=rsa; p=...`."""
    return f"v=DKIM1; k={key.key_type}; p={key.public_key}"


def txt_strings(value):
    """`value` cut into the at most 255-byte strings one TXT record is made of."""
    data = value.encode("ascii")
    return [data[i : i + _TXT_STRING].decode("ascii") for i in range(0, len(data), _TXT_STRING)] or [""]


def zone_line(key):
    """The record as a zone-file line, ready to copy (the name ends with a dot: it is absolute)."""
    strings = " ".join(f'"{s}"' for s in txt_strings(txt_value(key)))
    return f"{record_name(key)}. IN TXT {strings}"
