"""dbmail's settings, each with its default, type and limits, in one table; read through `settings`.

    from dbmail.conf import settings as conf
    conf.DBMAIL_BATCH_SIZE

Every read looks the Django setting up at that moment, so override_settings
and pytest-django's `settings` fixture work, and falls back to the default
here when the project does not set it. The same table serves twice more:

- start-up: mailsite/settings.py reads each of these from the environment
  with its type and stops with a ConfigurationError naming the setting;
- `manage.py check`: the system check registered in DbmailConfig.ready()
  applies the same rules to the final settings, whatever set them.

README's Settings table says what each one means.
"""

import re
from dataclasses import dataclass
from email.utils import parseaddr

from django.conf import settings as django_settings
from django.core import checks

MISSING = object()
_ARTICLE = {
    "int": "an int",
    "float": "a number",
    "bool": "a boolean",
    "str": "a string",
    "list": "a list of strings",
    "dict": "a JSON object",
}


@dataclass(frozen=True)
class Derived:
    """A default computed from other settings: `compute(get)`, where get(name) reads any setting."""

    compute: object


@dataclass(frozen=True)
class Setting:
    name: str
    default: object
    type: type  # int, float, bool, str, list (of str) or dict (JSON in the environment)
    minimum: float | None = None
    choices: tuple = ()
    check: object = None  # value -> "" or the rest of the sentence after "Setting NAME=value"
    clean: object = None  # applied to a value read from the environment (a trailing "/", case)
    secret: bool = False  # the value never appears in a message
    show_value: bool = True  # False: messages name the setting only (the check names the bad part itself)
    also: tuple = ()  # other types a Python settings file may give (4 for "4"); the check still judges the value

    def default_for(self, get):
        if isinstance(self.default, Derived):
            return self.default.compute(get)
        if isinstance(self.default, list | dict):
            return type(self.default)(self.default)  # a fresh one each time, never a shared one
        return self.default

    def shown(self, value):
        """How a message names this setting with `value` (without it when secret)."""
        if self.secret or not self.show_value:
            return f"Setting {self.name}"
        return f"Setting {self.name}={value!r}"

    def problem(self, value, shown=None):
        """Why `value` cannot be used, as a sentence naming the setting; "" when it can."""
        shown = shown or self.shown(value)
        if not _has_type(value, self.type) and not any(_has_type(value, kind) for kind in self.also):
            return f"{shown} must be {_ARTICLE[self.type.__name__]}, not {type(value).__name__}."
        if self.minimum is not None and value < self.minimum:
            return f"{shown} must be at least {self.minimum}."
        if self.choices and value not in self.choices:
            return f"{shown} must be one of {', '.join(self.choices)}."
        why = self.check(value) if self.check else ""
        return f"{shown}{why}." if why else ""


@dataclass(frozen=True)
class Rule:
    """A rule over several settings: `problem(get)` returns "" or a sentence naming them."""

    id: str
    names: tuple
    problem: object


def _has_type(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
    if kind is dict:
        return isinstance(value, dict)
    return isinstance(value, kind)


class AppSettings:
    """An app's settings table: attribute access reads the Django setting or the default."""

    def __init__(self, label, table, rules=()):
        self.label = label
        self.table = {spec.name: spec for spec in table}
        self.rules = tuple(rules)

    def __getattr__(self, name):
        try:
            spec = self.table[name]
        except KeyError:
            raise AttributeError(f"{name} is not one of {self.label}'s settings") from None
        value = getattr(django_settings, name, MISSING)
        return spec.default_for(self.get) if value is MISSING else value

    def __dir__(self):
        return sorted(self.table)

    def get(self, name):
        """Any setting: this app's (with its default), or Django's."""
        return getattr(self, name) if name in self.table else getattr(django_settings, name)

    def problems(self, get=None):
        """(check id, message) for every unusable value; `get` reads a setting (default: the live settings)."""
        get = get or self.get
        found, bad = [], set()
        for spec in self.table.values():
            message = spec.problem(get(spec.name))
            if message:
                found.append((f"{self.label}.E001", message))
                bad.add(spec.name)
        found.extend(self.rule_problems(get, skip=bad))
        return found

    def rule_problems(self, get, skip=()):
        """The rules' problems, leaving out rules over settings already found unusable one by one."""
        found = []
        for rule in self.rules:
            if not set(rule.names) & set(skip):
                message = rule.problem(get)
                if message:
                    found.append((rule.id, message))
        return found

    def check(self, app_configs=None, **kwargs):
        """The system check (`manage.py check`): one Error per unusable setting, naming it and why."""
        return [checks.Error(message, id=check_id) for check_id, message in self.problems()]


# --- the rules of single values ---


def _domain_of(address):
    return parseaddr(address or "")[1].rpartition("@")[2]


def _not_an_address(value):
    return "" if "@" in parseaddr(value)[1] else " is not an email address"


def _not_an_unsubscribe_address(value):
    if _not_an_address(value):
        return _not_an_address(value)
    # Mail names <local>+<26-character token>@<domain>: the whole local part must fit RFC 5321's 64 characters.
    local = parseaddr(value)[1].rpartition("@")[0]
    if "+" in local or len(local) > 37:
        return ": the local part must have no + and at most 37 characters (mail adds +<token> to it)"
    return ""


_DOMAIN = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+")


def _not_a_domain(value):
    return "" if not value or _DOMAIN.fullmatch(value) else " is not a domain name"


def not_domains(value):
    """For a list of domains (mailgate's MAILGATE_LIST_DOMAINS)."""
    bad = next((d for d in value if not _DOMAIN.fullmatch(d)), None)
    return f": {bad!r} is not a domain name" if bad is not None else ""


def not_addresses(value):
    """For a list of email addresses (mailgate's MAILGATE_COMPLAINT_ADDRESSES)."""
    bad = next((a for a in value if _not_an_address(a) or parseaddr(a)[1] != a), None)
    return f": {bad!r} is not an email address" if bad is not None else ""


def _not_a_verp_prefix(value):
    return "" if re.fullmatch(r"[A-Za-z0-9._-]{1,20}", value) else " must be 1-20 letters, digits, . _ -"


def _not_amqp(value):
    if not value or value.startswith(("amqp://", "amqps://")):
        return ""
    return f" must be an amqp:// or amqps:// URL, not {value.partition(':')[0]}:"  # the rest may hold a password


def _not_a_process_count(value):
    if value == "auto" or (str(value).isdigit() and int(value) >= 1):
        return ""
    return " must be auto (one per core) or a whole number of at least 1"


def _bad_destination_groups(value):
    from dbmail.send import destinations  # no models: safe while the settings load

    return destinations.problem(value)


_RATE = re.compile(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)")


def _not_a_rate(value):
    if value == "off" or _RATE.fullmatch(value.replace(" ", "")):
        return ""
    return " must be like 120/min (per second, min, hour or day) or off"


def _short_secret(value):
    return ": each secret must be at least 16 characters" if any(len(s) < 16 for s in value) else ""


def _bad_basic_auth(value):
    if any(":" not in pair or len(pair.partition(":")[2]) < 16 for pair in value):
        return ": each entry is user:password with a password of at least 16 characters"
    return ""


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _not_a_table_name(value):
    # Quoted when used, but a name must still be one a DBA would write: no quotes, spaces or dots beyond one.
    if not value or (value.count(".") <= 1 and all(_IDENTIFIER.fullmatch(part) for part in value.split("."))):
        return ""
    return " is not a table name (letters, digits and _, at most 63 of them, optionally schema.table)"


def _not_a_database_alias(value):
    if not value or re.fullmatch(r"[a-z][a-z0-9_]*", value.replace("{sid}", "x")):
        return ""
    return " is not a database alias (a site name: lower-case letters, digits and _, or {sid})"


def _short_token(value):
    return ": each token must be at least 16 characters" if any(len(s) < 16 for s in value) else ""


def _bad_mappings(value):
    from dbmail.track import mappings  # only when set: conf is read before Django is set up

    return mappings.problem(value) if value else ""


SETTINGS = [
    # The outbox.
    Setting("DBMAIL_SITE_URL", "http://localhost:8000", str, clean=lambda v: v.rstrip("/")),
    Setting("DBMAIL_SITE_NAME", "mailsite", str),
    # Empty: each Message-ID takes its From address's domain (aligned with From, as DKIM and DMARC read mail).
    Setting("DBMAIL_MESSAGE_ID_DOMAIN", "", str, check=_not_a_domain, clean=lambda v: v.strip().lower()),
    Setting(
        "DBMAIL_UNSUBSCRIBE_MAILTO",
        Derived(lambda get: f"unsubscribe@{get('DBMAIL_MESSAGE_ID_DOMAIN') or _domain_of(get('DEFAULT_FROM_EMAIL'))}"),
        str,
        check=_not_an_unsubscribe_address,
    ),
    Setting("DBMAIL_BATCH_SIZE", 100, int, minimum=1),
    # The render budget (dbmail.content.template_limits): the longest subject or body one recipient's mail may
    # render to. Far above any real mail; what it stops is a template made to exhaust memory or time.
    Setting("DBMAIL_MAX_RENDERED_BYTES", 1024 * 1024, int, minimum=10 * 1024),
    Setting("DBMAIL_LEASE_SECONDS", 300, int, minimum=1),
    Setting("DBMAIL_MAX_ATTEMPTS", 100, int, minimum=1),
    Setting("DBMAIL_RETRY_BASE_SECONDS", 300, int, minimum=1),
    Setting("DBMAIL_RETRY_MAX_SECONDS", 3600, int, minimum=1),
    Setting("DBMAIL_THROTTLE_PER_SECOND", 0.0, float, minimum=0),
    Setting("DBMAIL_EXPAND_CHUNK", 1000, int, minimum=1),
    Setting("DBMAIL_EXPAND_WRITER", "process", str, choices=("process", "threads")),
    Setting("DBMAIL_ASYNC_COMMIT", True, bool),
    Setting("DBMAIL_ASYNC_ENQUEUE", Derived(lambda get: get("DBMAIL_ASYNC_COMMIT")), bool),
    Setting("DBMAIL_OUTCOME_WINDOW", 32, int, minimum=1),
    Setting("DBMAIL_STUCK_AFTER_SECONDS", 3600, int, minimum=1),
    # A server that fails for reasons no recipient caused: new connections, DELAY seconds doubling, then give up.
    Setting("DBMAIL_RECONNECT_TRIES", 2, int, minimum=0),
    Setting("DBMAIL_RECONNECT_DELAY_SECONDS", 1.0, float, minimum=0),
    # Processes one dbmail_cron run sends with when enough mail is due (dbmail.ops.processes); auto: one a core.
    Setting(
        "DBMAIL_SEND_PROCESSES", "auto", str, check=_not_a_process_count, clean=lambda v: v.strip().lower(), also=(int,)
    ),
    # Body bytes a sender holds at once (the batch being sent and the next one, claimed ahead).
    Setting("DBMAIL_BATCH_MAX_BYTES", 20 * 1024 * 1024, int, minimum=1),
    # Pacing per destination group, shared by every host (dbmail.send.destinations, pacing, backoff).
    Setting("DBMAIL_DESTINATION_GROUPS", {}, dict, check=_bad_destination_groups, show_value=False),
    Setting("DBMAIL_BACKOFF_FLOOR_PER_MINUTE", 10.0, float, minimum=0.1),
    Setting("DBMAIL_BACKOFF_RECOVERY_PERCENT", 10.0, float, minimum=0.1),
    Setting("DBMAIL_BACKOFF_START_PER_MINUTE", 600.0, float, minimum=0.1),
    # The reputation guard (dbmail.track.guard): a request bouncing or drawing complaints this much is paused.
    Setting("DBMAIL_GUARD_MIN_SENT", 500, int, minimum=1),
    Setting("DBMAIL_GUARD_BOUNCE_PERCENT", 5.0, float, minimum=0),
    Setting("DBMAIL_GUARD_COMPLAINT_PERCENT", 0.3, float, minimum=0),
    # DKIM signing and the DNS checks.
    Setting("DBMAIL_DKIM_RELOAD_SECONDS", 60, int, minimum=1),
    Setting("DBMAIL_DNS_TIMEOUT", 5.0, float, minimum=0.1),
    # The comm panel.
    Setting("DBMAIL_PANEL_ALL_STAFF", True, bool),
    Setting("DBMAIL_LARGE_SEND_WARNING", 1000, int, minimum=0),
    Setting("DBMAIL_MAX_ATTACHMENT_BYTES", 10 * 1024 * 1024, int, minimum=0),
    Setting("DBMAIL_PANEL_PAGE_SIZE", 50, int, minimum=1),
    Setting("DBMAIL_PANEL_POLL_SECONDS", 3, int, minimum=1),
    # The sending API: calls that send, per user and window (dbmail.intake.api.throttling).
    Setting("DBMAIL_API_SEND_RATE", "120/min", str, check=_not_a_rate, clean=lambda v: v.strip().lower()),
    # POST /api/v1/token/ (a password check) per username and window: password guessing is slow.
    Setting("DBMAIL_API_LOGIN_RATE", "10/min", str, check=_not_a_rate, clean=lambda v: v.strip().lower()),
    # The XML spool (seed 003); "{sid}" in the directory stands for the site chosen with --sid.
    Setting("DBMAIL_SPOOL_DIR", "", str),
    Setting("DBMAIL_SPOOL_KEEP_DAYS", 7, int, minimum=1),
    Setting("DBMAIL_SPOOL_RETRY_SECONDS", 3600, int, minimum=1),
    Setting("DBMAIL_SPOOL_MAX_ATTEMPTS", 100, int, minimum=1),
    # The table queue (seed 003, SOWASQL): a table of the seed's shape, in this site's database or another.
    Setting("DBMAIL_SMAILER_TABLE", "tbl_mails", str, check=_not_a_table_name),
    Setting("DBMAIL_SMAILER_DATABASE", "", str, check=_not_a_database_alias),
    # VERP return paths.
    Setting("DBMAIL_VERP_DOMAIN", "", str, check=_not_a_domain, clean=lambda v: v.strip().lower()),
    Setting("DBMAIL_VERP_PREFIX", "bounces", str, check=_not_a_verp_prefix),
    # Delivery tracking: MTA callbacks -> tracking queue -> dbmail_track.
    Setting("TRACKING_QUEUE_URL", "", str, check=_not_amqp, secret=True),
    Setting("TRACKING_EXCHANGE", "mailsite.tracking", str),
    Setting("TRACKING_QUEUE", "mailsite.tracking.dbmail", str),
    Setting("TRACKING_BATCH_SIZE", 200, int, minimum=1),
    Setting("TRACKING_WEBHOOK_ENABLED", False, bool),
    Setting("TRACKING_WEBHOOK_SECRETS", [], list, check=_short_secret, secret=True),
    Setting("TRACKING_WEBHOOK_BASIC_AUTH", [], list, check=_bad_basic_auth, secret=True),
    Setting("TRACKING_WEBHOOK_MAX_AGE", 300, int, minimum=1),
    Setting("TRACKING_WEBHOOK_BEARER_TOKENS", [], list, check=_short_token, secret=True),
    Setting("TRACKING_WEBHOOK_MAPPINGS", "", str, check=_bad_mappings, show_value=False),
    # Health: dbmail_status's thresholds, a warning first, then critical (DBMAIL_STUCK_AFTER_SECONDS above).
    Setting("DBMAIL_HEALTH_WARNING_SECONDS", 900, int, minimum=1),
    Setting("TRACKING_HEALTH_WARNING_SECONDS", 600, int, minimum=1),
    Setting("TRACKING_HEALTH_CRITICAL_SECONDS", 3600, int, minimum=1),
    Setting("TRACKING_HEALTH_DEPTH_WARNING", 1000, int, minimum=1),
    Setting("TRACKING_HEALTH_DEPTH_CRITICAL", 10000, int, minimum=1),
    Setting("TRACKING_HEALTH_FOLLOWER_WARNING_SECONDS", 300, int, minimum=1),
    Setting("TRACKING_HEALTH_FOLLOWER_CRITICAL_SECONDS", 1800, int, minimum=1),
]


def _retry_order(get):
    if get("DBMAIL_RETRY_MAX_SECONDS") < get("DBMAIL_RETRY_BASE_SECONDS"):
        return "Setting DBMAIL_RETRY_MAX_SECONDS must not be below DBMAIL_RETRY_BASE_SECONDS."
    return ""


def _webhook_credentials(get):
    # An enabled endpoint without credentials would be open to anyone.
    credentials = ("TRACKING_WEBHOOK_SECRETS", "TRACKING_WEBHOOK_BASIC_AUTH", "TRACKING_WEBHOOK_BEARER_TOKENS")
    if get("TRACKING_WEBHOOK_ENABLED") and not any(get(name) for name in credentials):
        return (
            "Setting TRACKING_WEBHOOK_SECRETS (or TRACKING_WEBHOOK_BASIC_AUTH, or TRACKING_WEBHOOK_BEARER_TOKENS) "
            "is required when TRACKING_WEBHOOK_ENABLED is on."
        )
    return ""


def _tls_and_ssl(get):
    if _or_false(get, "EMAIL_USE_TLS") and _or_false(get, "EMAIL_USE_SSL"):
        return "Settings EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on."
    return ""


def warning_first(warning, critical):
    """A rule: the warning threshold `warning` must not be above the critical one."""

    def problem(get):
        if get(warning) > get(critical):
            return f"Setting {warning} must not be above {critical} (the warning comes first)."
        return ""

    return problem


def _or_false(get, name):
    """A Django setting that may be absent (a project without it means off)."""
    try:
        return get(name)
    except (AttributeError, KeyError):
        return False


RULES = [
    Rule("dbmail.E002", ("DBMAIL_RETRY_BASE_SECONDS", "DBMAIL_RETRY_MAX_SECONDS"), _retry_order),
    Rule(
        "dbmail.E003",
        (
            "TRACKING_WEBHOOK_ENABLED",
            "TRACKING_WEBHOOK_SECRETS",
            "TRACKING_WEBHOOK_BASIC_AUTH",
            "TRACKING_WEBHOOK_BEARER_TOKENS",
        ),
        _webhook_credentials,
    ),
    Rule("dbmail.E004", ("EMAIL_USE_TLS", "EMAIL_USE_SSL"), _tls_and_ssl),
    *(
        Rule("dbmail.E005", (warning, critical), warning_first(warning, critical))
        for warning, critical in (
            ("DBMAIL_HEALTH_WARNING_SECONDS", "DBMAIL_STUCK_AFTER_SECONDS"),
            ("TRACKING_HEALTH_WARNING_SECONDS", "TRACKING_HEALTH_CRITICAL_SECONDS"),
            ("TRACKING_HEALTH_DEPTH_WARNING", "TRACKING_HEALTH_DEPTH_CRITICAL"),
            ("TRACKING_HEALTH_FOLLOWER_WARNING_SECONDS", "TRACKING_HEALTH_FOLLOWER_CRITICAL_SECONDS"),
        )
    ),
]

settings = AppSettings("dbmail", SETTINGS, RULES)


def check_settings(app_configs=None, **kwargs):
    """dbmail's system check (registered in DbmailConfig.ready)."""
    return settings.check()
