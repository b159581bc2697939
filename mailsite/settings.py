"""Settings for mailsite, read from the environment through django-environ.

Every setting read here is listed in README with its default. A value that
cannot be used stops start-up with ImproperlyConfigured naming the setting,
so a typo in a crontab or unit file is found at once, not at 3 a.m.
"""

import os
import re
from email.utils import parseaddr
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; absent in tests and CI


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def setting(name, cast, default, *, minimum=None, choices=None):
    """Read one environment setting, failing with the setting's name on bad input."""
    raw = env.str(name, default=None)
    if raw is None or raw == "":
        return default
    if cast == "bool":
        # django-environ reads any unknown word as False; a typo must not silently turn a switch off.
        lowered = raw.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise ImproperlyConfigured(f"Setting {name}={raw!r} is not a boolean (use true or false).")
        return lowered in _TRUE
    try:
        value = getattr(env, cast)(name)
    except (ValueError, TypeError, environ.ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"Setting {name}={raw!r} is not a valid {cast}: {exc}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"Setting {name}={raw!r} must be at least {minimum}.")
    if choices is not None and value not in choices:
        raise ImproperlyConfigured(f"Setting {name}={raw!r} must be one of {', '.join(choices)}.")
    return value


def address_setting(name, default):
    value = setting(name, "str", default)
    if "@" not in parseaddr(value)[1]:
        raise ImproperlyConfigured(f"Setting {name}={value!r} is not an email address.")
    return value


DEBUG = setting("DEBUG", "bool", False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "Setting SECRET_KEY is required when DEBUG is off "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    SECRET_KEY = "insecure-development-only-key"  # DEBUG only; never served in production

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "dbmail",
    "mailgate",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mailsite.urls"
WSGI_APPLICATION = "mailsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

try:
    DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'mailsite.sqlite3'}")}
except (environ.ImproperlyConfigured, ValueError, KeyError) as exc:
    raise ImproperlyConfigured(f"Setting DATABASE_URL is not a usable database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(exist_ok=True)
    # The demo database is shared by the web server and the sender loop.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = setting("TIME_ZONE", "str", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = setting("STATIC_ROOT", "str", str(VAR_DIR / "static"))
MEDIA_ROOT = setting("MEDIA_ROOT", "str", str(VAR_DIR / "media"))
MEDIA_URL = "media/"

LOGIN_URL = "admin:login"

# --- Outgoing mail transport (Django's email backends are the sending seam) ---
EMAIL_BACKEND = setting("EMAIL_BACKEND", "str", "dbmail.backends.SMTPBackend")
EMAIL_HOST = setting("EMAIL_HOST", "str", "localhost")
EMAIL_PORT = setting("EMAIL_PORT", "int", 25, minimum=1)
EMAIL_HOST_USER = setting("EMAIL_HOST_USER", "str", "")
EMAIL_HOST_PASSWORD = setting("EMAIL_HOST_PASSWORD", "str", "")
EMAIL_USE_TLS = setting("EMAIL_USE_TLS", "bool", False)
EMAIL_USE_SSL = setting("EMAIL_USE_SSL", "bool", False)
EMAIL_TIMEOUT = setting("EMAIL_TIMEOUT", "float", 30.0, minimum=0.1)
if env.str("EMAIL_URL", default=""):
    try:
        _email = env.email_url("EMAIL_URL")
    except (environ.ImproperlyConfigured, ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"Setting EMAIL_URL is not a usable mail URL: {exc}") from None
    if _email["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend":
        _email["EMAIL_BACKEND"] = EMAIL_BACKEND if "smtp" in EMAIL_BACKEND.lower() else "dbmail.backends.SMTPBackend"
    globals().update({k: v for k, v in _email.items() if k.startswith("EMAIL_")})
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("Settings EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be on.")

DEFAULT_FROM_EMAIL = address_setting("DEFAULT_FROM_EMAIL", "mailsite <noreply@example.org>")
SERVER_EMAIL = address_setting("SERVER_EMAIL", DEFAULT_FROM_EMAIL)

# --- dbmail: the outbox ---
# Absolute base of links in mail (unsubscribe, web version): mail is read far from the request that made it.
DBMAIL_SITE_URL = setting("DBMAIL_SITE_URL", "str", "http://localhost:8000").rstrip("/")
DBMAIL_SITE_NAME = setting("DBMAIL_SITE_NAME", "str", "mailsite")
DBMAIL_MESSAGE_ID_DOMAIN = setting(
    "DBMAIL_MESSAGE_ID_DOMAIN", "str", parseaddr(DEFAULT_FROM_EMAIL)[1].rpartition("@")[2]
)
DBMAIL_UNSUBSCRIBE_MAILTO = address_setting("DBMAIL_UNSUBSCRIBE_MAILTO", f"unsubscribe@{DBMAIL_MESSAGE_ID_DOMAIN}")
# Mail names <local>+<26-character token>@<domain>: the whole local part must fit RFC 5321's 64 characters.
_unsubscribe_local = parseaddr(DBMAIL_UNSUBSCRIBE_MAILTO)[1].rpartition("@")[0]
if "+" in _unsubscribe_local or len(_unsubscribe_local) > 37:
    raise ImproperlyConfigured(
        f"Setting DBMAIL_UNSUBSCRIBE_MAILTO={DBMAIL_UNSUBSCRIBE_MAILTO!r}: the local part must have no + "
        "and at most 37 characters (mail adds +<token> to it)."
    )
DBMAIL_BATCH_SIZE = setting("DBMAIL_BATCH_SIZE", "int", 100, minimum=1)
DBMAIL_LEASE_SECONDS = setting("DBMAIL_LEASE_SECONDS", "int", 300, minimum=1)
DBMAIL_MAX_ATTEMPTS = setting("DBMAIL_MAX_ATTEMPTS", "int", 100, minimum=1)
DBMAIL_RETRY_BASE_SECONDS = setting("DBMAIL_RETRY_BASE_SECONDS", "int", 300, minimum=1)
DBMAIL_RETRY_MAX_SECONDS = setting("DBMAIL_RETRY_MAX_SECONDS", "int", 3600, minimum=1)
DBMAIL_THROTTLE_PER_SECOND = setting("DBMAIL_THROTTLE_PER_SECOND", "float", 0.0, minimum=0)
DBMAIL_EXPAND_CHUNK = setting("DBMAIL_EXPAND_CHUNK", "int", 1000, minimum=1)
DBMAIL_ASYNC_COMMIT = setting("DBMAIL_ASYNC_COMMIT", "bool", True)
DBMAIL_OUTCOME_WINDOW = setting("DBMAIL_OUTCOME_WINDOW", "int", 32, minimum=1)
DBMAIL_STUCK_AFTER_SECONDS = setting("DBMAIL_STUCK_AFTER_SECONDS", "int", 3600, minimum=1)
# --- dbmail: comm panel ---
DBMAIL_PANEL_ALL_STAFF = setting("DBMAIL_PANEL_ALL_STAFF", "bool", True)
DBMAIL_LARGE_SEND_WARNING = setting("DBMAIL_LARGE_SEND_WARNING", "int", 1000, minimum=0)
DBMAIL_MAX_ATTACHMENT_BYTES = setting("DBMAIL_MAX_ATTACHMENT_BYTES", "int", 10 * 1024 * 1024, minimum=0)
DBMAIL_PANEL_PAGE_SIZE = setting("DBMAIL_PANEL_PAGE_SIZE", "int", 50, minimum=1)
DBMAIL_PANEL_POLL_SECONDS = setting("DBMAIL_PANEL_POLL_SECONDS", "int", 3, minimum=1)
if DBMAIL_RETRY_MAX_SECONDS < DBMAIL_RETRY_BASE_SECONDS:
    raise ImproperlyConfigured("Setting DBMAIL_RETRY_MAX_SECONDS must not be below DBMAIL_RETRY_BASE_SECONDS.")

# --- dbmail: the XML spool (seed 003) and other sites' databases (the commands' --sid) ---
# The spool directory; "{sid}" in it stands for the site chosen with --sid ("default" without).
DBMAIL_SPOOL_DIR = setting("DBMAIL_SPOOL_DIR", "str", "")
DBMAIL_SPOOL_KEEP_DAYS = setting("DBMAIL_SPOOL_KEEP_DAYS", "int", 7, minimum=1)
DBMAIL_SPOOL_RETRY_SECONDS = setting("DBMAIL_SPOOL_RETRY_SECONDS", "int", 3600, minimum=1)
DBMAIL_SPOOL_MAX_ATTEMPTS = setting("DBMAIL_SPOOL_MAX_ATTEMPTS", "int", 100, minimum=1)
# DATABASE_URL_<SID>=... adds the database alias <sid> (lower-case), selected with --sid.
for _key in sorted(k for k in os.environ if k.startswith("DATABASE_URL_")):
    _sid = _key[len("DATABASE_URL_") :].lower()
    if _sid == "default":
        raise ImproperlyConfigured(f"Setting {_key}: the default site's database is DATABASE_URL.")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", _sid):
        raise ImproperlyConfigured(f"Setting {_key}: the site name must be a letter, then letters, digits or _.")
    try:
        DATABASES[_sid] = env.db(_key)
    except (environ.ImproperlyConfigured, ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"Setting {_key} is not a usable database URL: {exc}") from None
    if not DATABASES[_sid].get("ENGINE"):
        raise ImproperlyConfigured(f"Setting {_key} is not a usable database URL: unknown database engine.")

# --- Delivery tracking: MTA callbacks -> tracking queue -> dbmail_track (see README, "Delivery tracking") ---
TRACKING_QUEUE_URL = setting("TRACKING_QUEUE_URL", "str", "")
if TRACKING_QUEUE_URL and not TRACKING_QUEUE_URL.startswith(("amqp://", "amqps://")):
    # The value may hold a password: name the scheme only.
    _scheme = TRACKING_QUEUE_URL.partition(":")[0]
    raise ImproperlyConfigured(f"Setting TRACKING_QUEUE_URL must be an amqp:// or amqps:// URL, not {_scheme}:.")
TRACKING_EXCHANGE = setting("TRACKING_EXCHANGE", "str", "mailsite.tracking")
TRACKING_QUEUE = setting("TRACKING_QUEUE", "str", "mailsite.tracking.dbmail")
TRACKING_BATCH_SIZE = setting("TRACKING_BATCH_SIZE", "int", 200, minimum=1)
TRACKING_WEBHOOK_ENABLED = setting("TRACKING_WEBHOOK_ENABLED", "bool", False)
TRACKING_WEBHOOK_SECRETS = setting("TRACKING_WEBHOOK_SECRETS", "list", [])
TRACKING_WEBHOOK_BASIC_AUTH = setting("TRACKING_WEBHOOK_BASIC_AUTH", "list", [])
TRACKING_WEBHOOK_MAX_AGE = setting("TRACKING_WEBHOOK_MAX_AGE", "int", 300, minimum=1)
if any(len(secret) < 16 for secret in TRACKING_WEBHOOK_SECRETS):
    raise ImproperlyConfigured("Setting TRACKING_WEBHOOK_SECRETS: each secret must be at least 16 characters.")
if any(":" not in pair or len(pair.partition(":")[2]) < 16 for pair in TRACKING_WEBHOOK_BASIC_AUTH):
    raise ImproperlyConfigured(
        "Setting TRACKING_WEBHOOK_BASIC_AUTH: each entry is user:password with a password of at least 16 characters."
    )
# An enabled endpoint without credentials would be open to anyone: refuse to start instead.
if TRACKING_WEBHOOK_ENABLED and not (TRACKING_WEBHOOK_SECRETS or TRACKING_WEBHOOK_BASIC_AUTH):
    raise ImproperlyConfigured(
        "Setting TRACKING_WEBHOOK_SECRETS (or TRACKING_WEBHOOK_BASIC_AUTH) is required when TRACKING_WEBHOOK_ENABLED is on."
    )

# --- VERP and mailgate (incoming mail) ---
DBMAIL_VERP_DOMAIN = setting("DBMAIL_VERP_DOMAIN", "str", "").strip().lower()
if DBMAIL_VERP_DOMAIN and not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", DBMAIL_VERP_DOMAIN):
    raise ImproperlyConfigured(f"Setting DBMAIL_VERP_DOMAIN={DBMAIL_VERP_DOMAIN!r} is not a domain name.")
DBMAIL_VERP_PREFIX = setting("DBMAIL_VERP_PREFIX", "str", "bounces")
if not re.fullmatch(r"[A-Za-z0-9._-]{1,20}", DBMAIL_VERP_PREFIX):
    raise ImproperlyConfigured(
        f"Setting DBMAIL_VERP_PREFIX={DBMAIL_VERP_PREFIX!r} must be 1-20 letters, digits, . _ -."
    )
MAILGATE_MAX_BYTES = setting("MAILGATE_MAX_BYTES", "int", 25 * 1024 * 1024, minimum=1024)
MAILGATE_UNKNOWN_RECIPIENT = setting("MAILGATE_UNKNOWN_RECIPIENT", "str", "bounce", choices=("bounce", "notice"))
MAILGATE_SEND_NOW_MAX = setting("MAILGATE_SEND_NOW_MAX", "int", 20, minimum=0)
MAILGATE_NOTICE_INTERVAL_SECONDS = setting("MAILGATE_NOTICE_INTERVAL_SECONDS", "int", 3600, minimum=0)
# The domains the MTA hands to the gate for lists; an address elsewhere is never one of our own (see README).
MAILGATE_LIST_DOMAINS = [d.strip().lower() for d in setting("MAILGATE_LIST_DOMAINS", "list", []) if d.strip()]
for _domain in MAILGATE_LIST_DOMAINS:
    if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", _domain):
        raise ImproperlyConfigured(f"Setting MAILGATE_LIST_DOMAINS: {_domain!r} is not a domain name.")

# --- Mailboxes (IMAP polling) and the messages API ---
MAILGATE_IMAP_AFTER_READ_TIMEOUT = setting("MAILGATE_IMAP_AFTER_READ_TIMEOUT", "int", 30, minimum=0)
MAILGATE_IMAP_TIMEOUT = setting("MAILGATE_IMAP_TIMEOUT", "int", 30, minimum=1)
MAILGATE_IMAP_FETCH_BATCH = setting("MAILGATE_IMAP_FETCH_BATCH", "int", 50, minimum=1)
MAILGATE_IMAP_LEASE_SECONDS = setting("MAILGATE_IMAP_LEASE_SECONDS", "int", 300, minimum=10)
INSTALLED_APPS += ["rest_framework", "rest_framework.authtoken", "drf_spectacular"]
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "mailgate.mailboxes.api.pagination.Pagination",
    # DRF's parsers, but a JSON body nested too deeply is a 400 rather than a RecursionError (a 500).
    "DEFAULT_PARSER_CLASSES": [
        "dbmail.intake.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "PAGE_SIZE": setting("API_PAGE_SIZE", "int", 50, minimum=1),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # DRF's handler, and a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 413 in JSON.
    "EXCEPTION_HANDLER": "dbmail.intake.api.errors.exception_handler",
}
# The sending API (dbmail.intake.api): calls that send, per user, "<n>/<second|minute|hour|day>" or "off".
DBMAIL_API_SEND_RATE = setting("DBMAIL_API_SEND_RATE", "str", "120/min").strip().lower()
if DBMAIL_API_SEND_RATE != "off" and not re.fullmatch(
    r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", DBMAIL_API_SEND_RATE.replace(" ", "")
):
    raise ImproperlyConfigured(
        f"Setting DBMAIL_API_SEND_RATE={DBMAIL_API_SEND_RATE!r} must be like 120/min (per second, min, hour or day) or off."
    )
# /api/v1/schema/ maps every endpoint and field: signed-in users only unless published (mailgate.mailboxes.api.urls).
API_SCHEMA_PUBLIC = setting("API_SCHEMA_PUBLIC", "bool", False)
SPECTACULAR_SETTINGS = {
    "TITLE": "mailsite API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Three fields are called status: name their choice sets after what they are the status of.
    "ENUM_NAME_OVERRIDES": {
        "RequestStatusEnum": "dbmail.states.RequestStatus",
        "EmailStatusEnum": "dbmail.states.EmailStatus",
        "MessageStatusEnum": "mailgate.models.Message.Status",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": setting("LOG_LEVEL", "str", "WARNING")},
}

# --- Production hardening; `manage.py check --deploy` is clean with DEBUG off ---
if not DEBUG:
    SECURE_SSL_REDIRECT = setting("SECURE_SSL_REDIRECT", "bool", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = setting("SECURE_HSTS_SECONDS", "int", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
