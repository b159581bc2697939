"""Settings for the test suite: the real settings, pointed at PostgreSQL by default."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/mailsite")
os.environ.setdefault("SECRET_KEY", "test-suite-only-not-a-secret")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
# The same reconnecting after a server fault, with pauses short enough for a test suite.
os.environ.setdefault("DBMAIL_RECONNECT_DELAY_SECONDS", "0.05")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
