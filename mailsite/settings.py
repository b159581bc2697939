"""Settings for mailsite, read from the environment through django-environ.

Every setting read here is listed in README with its default. A value that
cannot be used stops start-up with ImproperlyConfigured (dbmail's
ConfigurationError) naming the setting, so a typo in a crontab or unit file
is found at once, not at 3 a.m.; manage.py and wsgi.py print that message
without a traceback (mailsite.startup).

The apps' own settings (DBMAIL_*, TRACKING_*, MAILGATE_*) are not listed
here: their defaults, types and limits are in dbmail/conf.py and
mailgate/conf.py, and are read from the environment with those.
"""

import json
import os
import re
from email.utils import parseaddr
from pathlib import Path

import environ

from dbmail import conf as dbmail_conf
from dbmail.conf import Setting
from dbmail.exceptions import ConfigurationError
from mailgate import conf as mailgate_conf

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; absent in tests and CI


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def read(spec, get=None):
    """One setting from the environment, or its default; an unusable value stops start-up naming it."""
    raw = env.str(spec.name, default=None)
    if raw is None or raw == "":
        value, shown = spec.default_for(get), None
    else:
        shown = spec.shown(raw)
        value = _cast(spec, raw, shown)
        if spec.clean:
            value = spec.clean(value)
    problem = spec.problem(value, shown)
    if problem:
        raise ConfigurationError(problem)
    return value


def _cast(spec, raw, shown):
    if spec.type is dict:
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ConfigurationError(f"{shown} is not valid JSON: {exc}.") from None
    if spec.type is bool:
        # django-environ reads any unknown word as False; a typo must not silently turn a switch off.
        lowered = raw.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise ConfigurationError(f"{shown} is not a boolean (use true or false).")
        return lowered in _TRUE
    try:
        return getattr(env, spec.type.__name__)(spec.name)
    except (ValueError, TypeError, environ.ImproperlyConfigured) as exc:
        raise ConfigurationError(f"{shown} is not a valid {spec.type.__name__}: {exc}") from None


def setting(name, kind, default, **limits):
    """A project setting (not an app's) from the environment; see read()."""
    return read(Setting(name, default, kind, **limits))


def address_setting(name, default):
    return read(
        Setting(name, default, str, check=lambda v: "" if "@" in parseaddr(v)[1] else " is not an email address")
    )


DEBUG = setting("DEBUG", bool, False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ConfigurationError(
            "Setting SECRET_KEY is required when DEBUG is off "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
        )
    SECRET_KEY = "insecure-development-only-key"  # DEBUG only; never served in production

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])

INSTALLED_APPS = [
    "mailsite.adminconfig.AdminConfig",  # django.contrib.admin, its pages registered when first needed
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
    raise ConfigurationError(f"Setting DATABASE_URL is not a usable database URL: {exc}") from None
# django-environ takes a scheme it does not know for the engine's name, and Django would then fail at the
# first query naming neither the setting nor the scheme ("'postgress' isn't an available database backend").
if DATABASES["default"]["ENGINE"] not in environ.Env.DB_SCHEMES.values():
    _scheme = env.str("DATABASE_URL", default="").partition(":")[0]
    raise ConfigurationError(
        f"Setting DATABASE_URL is not a usable database URL: unknown scheme {_scheme!r}"
        " (postgres://, sqlite:///, mysql://...)"
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(exist_ok=True)
    # The demo database is shared by the web server and the sender loop. In WAL mode the panel's
    # reads never make the sender wait, and with synchronous=NORMAL a commit does not wait for the
    # disk (a power cut may forget the last commits; a crash of the program loses nothing). The
    # sender commits each outcome alone, so four fsyncs per email in the default journal mode
    # were most of the demo's time.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = setting("TIME_ZONE", str, "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = setting("STATIC_ROOT", str, str(VAR_DIR / "static"))
MEDIA_ROOT = setting("MEDIA_ROOT", str, str(VAR_DIR / "media"))
MEDIA_URL = "media/"

LOGIN_URL = "admin:login"

# --- Outgoing mail transport (Django's email backends are the sending seam) ---
EMAIL_BACKEND = setting("EMAIL_BACKEND", str, "dbmail.backends.SMTPBackend")
EMAIL_HOST = setting("EMAIL_HOST", str, "localhost")
EMAIL_PORT = setting("EMAIL_PORT", int, 25, minimum=1)
EMAIL_HOST_USER = setting("EMAIL_HOST_USER", str, "")
EMAIL_HOST_PASSWORD = setting("EMAIL_HOST_PASSWORD", str, "")
EMAIL_USE_TLS = setting("EMAIL_USE_TLS", bool, False)
EMAIL_USE_SSL = setting("EMAIL_USE_SSL", bool, False)
EMAIL_TIMEOUT = setting("EMAIL_TIMEOUT", float, 30.0, minimum=0.1)
if env.str("EMAIL_URL", default=""):
    try:
        _email = env.email_url("EMAIL_URL")
    except (environ.ImproperlyConfigured, ValueError, KeyError) as exc:
        raise ConfigurationError(f"Setting EMAIL_URL is not a usable mail URL: {exc}") from None
    if _email["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend":
        _email["EMAIL_BACKEND"] = EMAIL_BACKEND if "smtp" in EMAIL_BACKEND.lower() else "dbmail.backends.SMTPBackend"
    globals().update({k: v for k, v in _email.items() if k.startswith("EMAIL_")})

DEFAULT_FROM_EMAIL = address_setting("DEFAULT_FROM_EMAIL", "mailsite <noreply@example.org>")
SERVER_EMAIL = address_setting("SERVER_EMAIL", DEFAULT_FROM_EMAIL)

# --- The apps' settings: DBMAIL_*, TRACKING_* (dbmail/conf.py) and MAILGATE_* (mailgate/conf.py) ---
for _spec in [*dbmail_conf.SETTINGS, *mailgate_conf.SETTINGS]:
    globals()[_spec.name] = read(_spec, globals().__getitem__)
for _table in (dbmail_conf.settings, mailgate_conf.settings):
    for _id, _message in _table.rule_problems(globals().__getitem__):
        raise ConfigurationError(_message)

# --- Other sites' databases (the commands' --sid) ---
# DATABASE_URL_<SID>=... adds the database alias <sid> (lower-case), selected with --sid.
for _key in sorted(k for k in os.environ if k.startswith("DATABASE_URL_")):
    _sid = _key[len("DATABASE_URL_") :].lower()
    if _sid == "default":
        raise ConfigurationError(f"Setting {_key}: the default site's database is DATABASE_URL.")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", _sid):
        raise ConfigurationError(f"Setting {_key}: the site name must be a letter, then letters, digits or _.")
    try:
        DATABASES[_sid] = env.db(_key)
    except (environ.ImproperlyConfigured, ValueError, KeyError) as exc:
        raise ConfigurationError(f"Setting {_key} is not a usable database URL: {exc}") from None
    if not DATABASES[_sid].get("ENGINE"):
        raise ConfigurationError(f"Setting {_key} is not a usable database URL: unknown database engine.")

# --- The messages API ---
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
    "PAGE_SIZE": setting("API_PAGE_SIZE", int, 50, minimum=1),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # DRF's handler, and a body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 413 in JSON.
    "EXCEPTION_HANDLER": "dbmail.intake.api.errors.exception_handler",
}
# /api/v1/schema/ maps every endpoint and field: signed-in users only unless published (mailgate.mailboxes.api.urls).
API_SCHEMA_PUBLIC = setting("API_SCHEMA_PUBLIC", bool, False)
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


def _not_printed_by_django(record):
    # With DEBUG on, Django's own console handler prints its loggers' records (runserver's lines,
    # "Not Found: ..."); passed up to the root's handler too, each came out twice under make run.
    return not (DEBUG and (record.name == "django" or record.name.startswith("django.")))


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"once": {"()": "django.utils.log.CallbackFilter", "callback": _not_printed_by_django}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["once"]}},
    "root": {"handlers": ["console"], "level": setting("LOG_LEVEL", str, "WARNING")},
}

# --- Production hardening; `manage.py check --deploy` is clean with DEBUG off ---
if not DEBUG:
    SECURE_SSL_REDIRECT = setting("SECURE_SSL_REDIRECT", bool, True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = setting("SECURE_HSTS_SECONDS", int, 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"
