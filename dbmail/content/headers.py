"""Header values every kind of outbound email shares: Date, the Message-ID's domain, Feedback-ID.

- Date: RFC 5322 reads `-0000` as "time zone unknown", which is what
  email.utils.formatdate writes for UTC; an aware datetime through
  format_datetime gives `+0000` (or the local offset with EMAIL_USE_LOCALTIME).
- Message-ID: its domain is the From address's (aligned with From, as DKIM
  and DMARC look at mail) unless DBMAIL_MESSAGE_ID_DOMAIN names one. A
  domain too long for the whole ID to fit MESSAGE_ID_MAX (a valid domain
  may have 253 characters) is shortened by fit_domain.
- Feedback-ID: Gmail's feedback loop reports complaints per value of this
  header, in its `a:b:c:SenderId` form; ours is
  `<request id>:<sender account id>:mailsite:<site name>`.
"""

import datetime
import functools
import hashlib
import re
from email.utils import format_datetime, parseaddr

from django.conf import settings
from django.utils import timezone

from dbmail.conf import settings as conf
from dbmail.content import addresses
from dbmail.exceptions import AddressError

FEEDBACK_ID = "Feedback-ID"

# What may never be in a header value a user gives: every character str.splitlines() breaks at, and NUL.
# Not only CR and LF: the email package folds a header with splitlines(), so a vertical tab, form feed
# or \x1c-\x1e in an ASCII value comes out as a line break of its own ("hi\vFrom : boss@x" became a
# second From line; "\f\v" an empty line that ended the header section), and Django's own check
# (BadHeaderError) looks for CR and LF only. \x85 and U+2028/9 are listed for the same reason.
LINE_BREAKS = re.compile("[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029\x00]")


def has_line_break(value):
    """Whether `value` holds a line break (as the email package sees one) or a NUL."""
    return LINE_BREAKS.search(value) is not None


def refuse_line_breaks(name, value):
    """ValueError for a header value with a line break, as Django's BadHeaderError (the email is dropped with it).

    The writers' own guard, for values that did not come through a form or the API (an ad-hoc
    outbox.enqueue(headers=...)); those refuse them with a 400 first.
    """
    if LINE_BREAKS.search(value):
        raise ValueError(f"Header values can't contain newlines ({name})")


_NOT_IN_FIELD = re.compile(r"[^A-Za-z0-9._-]+")


def date(now=None):
    """The Date header's value for `now` (default: this moment)."""
    now = now or timezone.now()
    if settings.EMAIL_USE_LOCALTIME:
        now = now.astimezone()  # the host's own zone, with its offset
    else:
        now = now.astimezone(datetime.UTC)
    return format_datetime(now)


@functools.lru_cache(maxsize=1024)
def domain_of(address):
    """The lower-case domain of an address or of a header value like `Ann <ann@example.org>`, in A-labels.

    An international domain is written as DNS and the wire know it (xn--...); "" if it is none.
    """
    domain = parseaddr(address or "")[1].rpartition("@")[2].strip().lower()
    try:
        return addresses.a_label(domain)
    except AddressError:
        return ""


# TextOfEmail.message_id's max_length (and a TrackingEvent's): a longer Message-ID fails the insert.
MESSAGE_ID_MAX = 255
# What dbmail.content.rendering puts around the domain: "<", time_ns (19 digits until 2286, 20 after),
# ".", 16 hex digits, "@" and ">".
MESSAGE_ID_OVERHEAD = 1 + 20 + 1 + 16 + 1 + 1
MESSAGE_ID_DOMAIN_MAX = MESSAGE_ID_MAX - MESSAGE_ID_OVERHEAD  # 215
_DIGEST_LABEL = 17  # "m" and 16 hex digits of the whole domain's SHA-256


def message_id_domain(from_address=None):
    """The right-hand side of a new Message-ID for mail from `from_address` (always short enough to fit)."""
    return fit_domain(
        conf.DBMAIL_MESSAGE_ID_DOMAIN
        or domain_of(from_address)
        or domain_of(settings.DEFAULT_FROM_EMAIL)
        or "localhost"
    )


@functools.lru_cache(maxsize=1024)
def fit_domain(domain):
    """`domain` itself if a Message-ID in it fits MESSAGE_ID_MAX; else a shorter name that stands for it.

    The shorter one is a label made of a digest of the whole domain, then as
    many of its rightmost labels as fit: still in the domain's own registered
    part (a reader sees whose mail it is), one name per domain (so two long
    domains never share IDs), and a valid dot-atom for a msg-id (RFC 5322 3.6.4).
    """
    if len(domain) <= MESSAGE_ID_DOMAIN_MAX:
        return domain
    digest = "m" + hashlib.sha256(domain.encode("utf-8", "replace")).hexdigest()[: _DIGEST_LABEL - 1]
    kept, room = [], MESSAGE_ID_DOMAIN_MAX - _DIGEST_LABEL
    for label in reversed(domain.split(".")):
        if len(label) + 1 > room:
            break
        kept.insert(0, label)
        room -= len(label) + 1
    return ".".join([digest, *kept])


def _field(value):
    # Colons separate the fields; anything but letters, digits and . _ - would only confuse a reader of reports.
    return _NOT_IN_FIELD.sub("-", str(value)).strip("-") or "-"


def feedback_id(request):
    """The Feedback-ID of every email of `request` (a MessageRequest)."""
    return f"{request.pk}:{request.sender_id}:mailsite:{_field(conf.DBMAIL_SITE_NAME)}"
