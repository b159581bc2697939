"""DKIM signatures on outbound mail: the From domain's newest active key signs the final bytes.

Both places that make an email's final bytes call sign() last, right before
the bytes go to the SMTP server: the lean writer (dbmail.send.mime) and the
Django message (dbmail.send.message: attachments, list forwards and mailbox
messages, whose stored MIME is sent as it is). So the signature covers
exactly what is sent, and a byte changed later (an MTA re-encoding, a header
added) shows.

- Algorithms: rsa-sha256 and ed25519-sha256 (RFC 8463), as the key says;
  canonicalization relaxed/relaxed; the signed header fields are those of
  SIGNED_HEADERS the message has, and From once more ("oversigned": a
  second From added later breaks the signature instead of being trusted).
- Keys are loaded once per process and again after
  DBMAIL_DKIM_RELOAD_SECONDS (a rotation reaches a long-running sender),
  and at once in the process that changed one. Signing cost matters (the
  sender's goal is thousands of emails a second): bench/dkim_cost.py.
- Mail whose From domain has no active key goes out unsigned and is counted
  per domain and day (UnsignedMail, written at most every FLUSH_SECONDS per
  process, at once for a domain's first of the day), and dbmail_status warns.
  Mail through an account's own SMTP server is not counted: that server
  signs for its own domain, or not, as its owner decides.
- A key or message dkimpy cannot sign with is logged and the mail goes out
  unsigned (and counted): a broken key must not stop the mail.
"""

import atexit
import logging
import threading
import time
from dataclasses import dataclass

from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from dbmail.conf import settings as conf
from dbmail.content.headers import domain_of
from dbmail.exceptions import Unreachable

log = logging.getLogger(__name__)

SIGNED_HEADERS = (
    b"from", b"sender", b"reply-to", b"to", b"cc", b"subject", b"date", b"message-id",
    b"in-reply-to", b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
    b"list-id", b"list-post", b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id",
)  # fmt: skip
OVERSIGNED = (b"from",)
CANONICALIZE = (b"relaxed", b"relaxed")
FLUSH_SECONDS = 30.0


@dataclass(frozen=True)
class SigningKey:
    domain: bytes
    selector: bytes
    algorithm: bytes  # b"rsa-sha256" or b"ed25519-sha256"
    private_key: bytes  # as dkimpy takes it: PKCS#1 PEM, or the base64 Ed25519 seed

    @classmethod
    def of(cls, key):
        """From a DkimKey row."""
        return cls(
            key.domain.encode("ascii"),
            key.selector.encode("ascii"),
            key.algorithm.encode("ascii"),
            key.private_key.encode("ascii"),
        )


_dkimpy_module = None


def _dkimpy():
    """dkimpy, imported when the first message is signed, with OpenSSL doing its RSA step.

    dkimpy pulls in dnspython: about 0.06 s of CPU of a sender's start-up (measured here), which a
    site without DKIM keys, or a run with nothing to send, would pay for nothing.
    """
    global _dkimpy_module
    if _dkimpy_module is None:
        import dkim

        _use_openssl_for_rsa(dkim)
        _dkimpy_module = dkim
    return _dkimpy_module


def sign_with(key, data):
    """`data` (a complete message, CRLF line ends) with a DKIM-Signature header field in front."""
    dkimpy = _dkimpy()
    signer = dkimpy.DKIM(data, signature_algorithm=key.algorithm, linesep=b"\r\n")
    present = {name.lower() for name, _ in signer.headers}
    include = [h for h in SIGNED_HEADERS if h in present] + [h for h in OVERSIGNED if h in present]
    field = signer.sign(key.selector, key.domain, key.private_key, canonicalize=CANONICALIZE, include_headers=include)
    return field + data


class KeyCache:
    """{domain: SigningKey} of each domain's newest active key, loaded from the database now and then."""

    def __init__(self):
        self._keys = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def get(self, domain):
        keys = self._keys  # once: forget() from another thread may empty the attribute meanwhile
        if keys is None or time.monotonic() >= self._expires:
            keys = self._load(keys)
        return keys.get(domain)

    def _load(self, old):
        from dbmail.models import DkimKey

        with self._lock:
            try:
                keys = {}
                for row in DkimKey.objects.filter(active=True).order_by("domain", "-created_at", "-id"):
                    keys.setdefault(row.domain, SigningKey.of(row))
            except DatabaseError as exc:
                if old is None:  # nothing to sign with yet: the email waits rather than going out unsigned
                    raise Unreachable(f"cannot load the DKIM keys: {exc}") from exc
                log.warning("dkim: cannot reload the keys, still using the old ones: %s", exc)
                self._expires = time.monotonic() + min(5, conf.DBMAIL_DKIM_RELOAD_SECONDS)
                return old
            self._keys = keys
            self._expires = time.monotonic() + conf.DBMAIL_DKIM_RELOAD_SECONDS
            return keys

    def forget(self):
        """Load again at the next email."""
        self._keys = None


class UnsignedCounter:
    """Counts unsigned emails per (domain, day) in memory and adds them to UnsignedMail now and then."""

    def __init__(self):
        self._counts = {}
        self._written = set()  # (domain, day) keys this process has written before
        self._flushed_at = time.monotonic()
        self._lock = threading.Lock()

    _day = (None, None)  # ((second, time zone), that day): worked out once a second, not once a message

    def _today(self):
        # The site's day (TIME_ZONE), as the dashboard counts it. Not the zone a request may have
        # activated: reading that is a context-local lookup, which cost more than the rest of a count.
        now = (int(time.time()), timezone.get_default_timezone())
        when, day = self._day
        if when != now:
            day = timezone.localdate(timezone=now[1])
            self._day = (now, day)
        return day

    def add(self, domain):
        key = (domain or "?", self._today())
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            due = key not in self._written or time.monotonic() - self._flushed_at >= FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self):
        """Write the counts so far; kept for the next flush if the database cannot take them."""
        from dbmail.models import UnsignedMail

        with self._lock:
            counts, self._counts = self._counts, {}
            self._flushed_at = time.monotonic()
        try:
            with transaction.atomic():  # a savepoint inside a caller's transaction: a failure here spoils nothing
                for (domain, day), n in counts.items():
                    rows = UnsignedMail.objects.filter(domain=domain, day=day)
                    if not rows.update(count=F("count") + n):
                        _, made = UnsignedMail.objects.get_or_create(domain=domain, day=day, defaults={"count": n})
                        if not made:  # another process made it meanwhile
                            rows.update(count=F("count") + n)
        except DatabaseError as exc:
            log.warning("dkim: cannot record unsigned mail: %s", exc)
            with self._lock:
                for key, n in counts.items():
                    self._counts[key] = self._counts.get(key, 0) + n
            return
        with self._lock:
            self._written |= set(counts)

    def pending(self):
        with self._lock:
            return dict(self._counts)


keys = KeyCache()
unsigned = UnsignedCounter()


def forget_keys(**kwargs):
    """Connected to DkimKey's post_save and post_delete: this process signs with what the database has now."""
    keys.forget()


def _at_exit():
    """The last counts, as the process ends. By then the database may be gone (a test run drops its
    own first) and so may the log's stream (pytest closes its capture): one line at most, no traceback."""
    counted = sum(unsigned.pending().values())
    if not counted:
        return
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False  # a dead stream: say nothing
    disabled, log.disabled = log.disabled, True  # flush's own warning repeats the driver's message over lines
    try:
        unsigned.flush()  # keeps the counts when the database refuses them
        left, reason = sum(unsigned.pending().values()), "the database is unavailable"
    except Exception as exc:  # the interpreter is going away; the count is not worth a traceback
        left, reason = counted, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        log.disabled = disabled
    try:
        if left:
            log.warning("dkim: %d unsigned emails not recorded at exit: %s", left, reason)
    finally:
        logging.raiseExceptions = raise_exceptions


atexit.register(_at_exit)


def sign(email, data):
    """The bytes to send for `email` (a TextOfEmail): `data` signed with its From domain's key, if it has one."""
    domain = domain_of(email.from_header)
    key = keys.get(domain)
    if key is not None:
        try:
            return sign_with(key, data)
        except _dkimpy().DKIMException:
            log.exception("dkim: cannot sign email %s with %s", email.pk, key.selector.decode())
    # Counted once per email, at its first attempt (the claim counts the attempt in progress), not per retry.
    if email.attempts <= 1 and _through_site_server(email):
        unsigned.add(domain)
    return data


def _through_site_server(email):
    return email.account_id is None or not email.account.smtp_host


def _use_openssl_for_rsa(dkimpy):
    """Let OpenSSL (the `cryptography` package) do dkimpy's RSA step: the same bytes, about 30 times faster.

    dkimpy computes RSA in pure Python: about 8 ms per 2048-bit signature,
    which alone would hold a sender to ~120 emails a second per core.
    RSASSA-PKCS1-v1_5 is deterministic, so OpenSSL's signature of the same
    digest with the same key is the same bytes (tests/test_dkim.py checks
    it). dkimpy looks both names up in its module when it signs; the
    replacements fall back to its own code for anything they do not know.
    The parsed key is kept too (dkimpy parses the PEM on every signature).
    """
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, utils
    except ImportError:  # pragma: no cover - cryptography is pinned in requirements.txt
        return
    pure_parse = getattr(dkimpy, "parse_pem_private_key", None)
    pure_sign = getattr(dkimpy, "RSASSA_PKCS1_v1_5_sign", None)
    if pure_parse is None or pure_sign is None or getattr(pure_sign, "openssl", False):
        return
    parsed, openssl = {}, {}

    def parse_pem_private_key(data):
        data = bytes(data)
        if data not in parsed:
            pk = pure_parse(data)
            try:
                openssl[pk["modulus"]] = serialization.load_pem_private_key(data, password=None)
            except Exception:  # dkimpy could read it, OpenSSL not: dkimpy's own code signs with it
                pass
            parsed[data] = pk
        return parsed[data]

    def rsa_sign(hash, private_key):
        key = openssl.get(private_key["modulus"]) if hash.name.lower() == "sha256" else None
        if key is None:
            return pure_sign(hash, private_key)
        return key.sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    rsa_sign.openssl = True
    rsa_sign.pure = pure_sign
    dkimpy.parse_pem_private_key, dkimpy.RSASSA_PKCS1_v1_5_sign = parse_pem_private_key, rsa_sign
