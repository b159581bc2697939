"""mailgate's settings, each with its default, type and limits; read through `settings` (see dbmail.conf).

    from mailgate.conf import settings as conf
    conf.MAILGATE_MAX_BYTES

The dbmail settings mailgate uses too (DBMAIL_UNSUBSCRIBE_MAILTO...) are read through dbmail.conf.
"""

import re

from dbmail.conf import AppSettings, Rule, Setting, not_addresses, not_domains, warning_first

_AUTHSERV_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/?^_`{|}~.-]+")  # an RFC 5322 atom: how MTAs write theirs


def _not_authserv_ids(value):
    bad = next((i for i in value if not _AUTHSERV_ID.fullmatch(i)), None)
    return f": {bad!r} is not an authserv-id (a host name such as mx.example.org)" if bad is not None else ""


SETTINGS = [
    # The gate (mail piped in by the MTA).
    Setting("MAILGATE_MAX_BYTES", 25 * 1024 * 1024, int, minimum=1024),
    Setting("MAILGATE_UNKNOWN_RECIPIENT", "bounce", str, choices=("bounce", "notice")),
    Setting("MAILGATE_SEND_NOW_MAX", 20, int, minimum=0),
    Setting("MAILGATE_NOTICE_INTERVAL_SECONDS", 3600, int, minimum=0),
    # No refusal notices at all: a refused post answers 77 (an unknown list 67) and the MTA bounces it itself.
    Setting("MAILGATE_REFUSE_AT_SMTP", False, bool),
    # The domains the MTA hands to the gate for lists; an address elsewhere is never one of our own.
    Setting(
        "MAILGATE_LIST_DOMAINS",
        [],
        list,
        check=not_domains,
        show_value=False,
        clean=lambda domains: [d.strip().lower() for d in domains if d.strip()],
    ),
    # Where feedback loops (Microsoft JMRP, Yahoo CFL...) send complaint reports, besides VERP addresses.
    Setting(
        "MAILGATE_COMPLAINT_ADDRESSES",
        [],
        list,
        check=not_addresses,
        show_value=False,
        clean=lambda addresses: [a.strip().lower() for a in addresses if a.strip()],
    ),
    # Members-only and staff-only lists: what a post whose sender address is not proven becomes
    # (mailgate.gate.proof): held for a moderator, refused, or trusted as the headers claim (forgeable).
    Setting("MAILGATE_UNVERIFIED_POSTS", "hold", str, choices=("hold", "refuse", "trust")),
    # The authserv-ids of our own MTA's Authentication-Results fields; the fields of any other are ignored.
    Setting(
        "MAILGATE_TRUSTED_AUTHSERV_IDS",
        [],
        list,
        check=_not_authserv_ids,
        clean=lambda ids: [i.strip().lower() for i in ids if i.strip()],
    ),
    # Mailboxes (IMAP polling).
    Setting("MAILGATE_IMAP_AFTER_READ_TIMEOUT", 30, int, minimum=0),
    Setting("MAILGATE_IMAP_TIMEOUT", 30, int, minimum=1),
    Setting("MAILGATE_IMAP_FETCH_BATCH", 50, int, minimum=1),
    Setting("MAILGATE_IMAP_LEASE_SECONDS", 300, int, minimum=10),
    # Health: dbmail_status's thresholds for the IMAP poller and the gate.
    Setting("MAILGATE_HEALTH_IMAP_WARNING_INTERVALS", 10, int, minimum=1),
    Setting("MAILGATE_HEALTH_IMAP_CRITICAL_INTERVALS", 30, int, minimum=1),
    Setting("MAILGATE_HEALTH_TEMPFAIL_WINDOW_SECONDS", 3600, int, minimum=1),
    Setting("MAILGATE_HEALTH_TEMPFAILS_CRITICAL", 3, int, minimum=1),
    # A message held for moderation longer than this makes the gate's check a warning: someone must decide.
    Setting("MAILGATE_HEALTH_HELD_WARNING_HOURS", 24, int, minimum=1),
]

RULES = [
    Rule(
        "mailgate.E002",
        ("MAILGATE_HEALTH_IMAP_WARNING_INTERVALS", "MAILGATE_HEALTH_IMAP_CRITICAL_INTERVALS"),
        warning_first("MAILGATE_HEALTH_IMAP_WARNING_INTERVALS", "MAILGATE_HEALTH_IMAP_CRITICAL_INTERVALS"),
    ),
]

settings = AppSettings("mailgate", SETTINGS, RULES)


def check_settings(app_configs=None, **kwargs):
    """mailgate's system check (registered in MailgateConfig.ready)."""
    return settings.check()
