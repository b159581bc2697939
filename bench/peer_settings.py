"""Settings for the benchmark's peers: django-post_office and django-mailer in a project of their own.

Only what the two need (auth, contenttypes, their apps), so their start-up
is theirs and not this site's; the same database (DATABASE_URL), so their
queue tables sit beside dbmail's, and the same sink (EMAIL_URL). Both send
through Django's own SMTP backend, as they are configured by default.
BENCH_MAILER_LOCK chooses django-mailer's lock file, so two runs can stand
for two hosts (each has its own file lock); post_office takes its lock file
on its command line (-L).
"""

import os

import environ

env = environ.Env()

SECRET_KEY = os.environ.get("SECRET_KEY", "bench-only-not-a-secret-0123456789abcdefghijklmnop")
DEBUG = False
ALLOWED_HOSTS = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "post_office",
    "mailer",
]
DATABASES = {"default": env.db("DATABASE_URL")}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True}]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
if os.environ.get("EMAIL_URL"):
    vars().update({k: v for k, v in env.email_url("EMAIL_URL").items() if k.startswith("EMAIL_")})
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
DEFAULT_FROM_EMAIL = "The Office <office@example.org>"

POST_OFFICE = {"BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"}}
MAILER_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
MAILER_LOCK_PATH = os.environ.get("BENCH_MAILER_LOCK") or None
