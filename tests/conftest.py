import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connection
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from .smtpserver import SMTPServer

# Shared fixtures: the tracking queue backends and the comm panel's signed-in editor.
pytest_plugins = ["tests.tracking_support", "tests.panel", "tests.queuetables", "tests.postfix"]

ROOT = Path(__file__).resolve().parent.parent

# The nightly profile: `pytest --hypothesis-profile=long tests/test_attack_fuzzed_bounces.py` (see README, Tests).
# The normal suite runs the fuzz tests with a fixed seed and a bounded number of examples instead.
LONG_EXAMPLES = 20_000
hypothesis_settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES,
    derandomize=False,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
# Every other property test, whatever its own settings, draws the same examples on every run (its
# max_examples kept): a suite that passed must pass again on a clean clone, so a new example can
# only come from the long profile, run on purpose.
hypothesis_settings.register_profile("fixed", derandomize=True, database=None)
if hypothesis_settings.default.max_examples != LONG_EXAMPLES:
    hypothesis_settings.load_profile("fixed")


@contextmanager
def time_limit(seconds, error):
    """Raise error() in the block once it has run `seconds`: an attack left unlimited fails its test, not the suite."""

    def ring(signum, frame):
        raise error()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz_settings(examples):
    """`examples` examples with a fixed seed, or the long profile's when that one is loaded."""
    if hypothesis_settings.default.max_examples == LONG_EXAMPLES:
        return hypothesis_settings(hypothesis_settings.get_profile("long"))
    return hypothesis_settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(autouse=True)
def own_signal_handlers():
    """Each test gives SIGINT and SIGTERM back as it found them.

    A command run in-process (call_command("dbmail_cron"), a RunLoop) installs handlers that only
    set a stop flag: left in place, they made the rest of a test run deaf to Ctrl-C and SIGTERM.
    """
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def fresh_dkim_state(monkeypatch):
    """Each test starts with no DKIM key cached for signing and nothing counted unsigned (both are per process)."""
    from dbmail.send import dkim

    monkeypatch.setattr(dkim, "keys", dkim.KeyCache())
    monkeypatch.setattr(dkim, "unsigned", dkim.UnsignedCounter())


@pytest.fixture(autouse=True)
def fresh_destination_limits():
    """Each test reads the admin's destination limits afresh (they are cached per process for a few seconds)."""
    from dbmail.send import limits

    limits.forget()
    yield
    limits.forget()


@pytest.fixture
def stub_dns(monkeypatch):
    """The DNS every lookup of the site gets (dbmail.ops.dnscheck.make_resolver): tests/dnsstub.py's, nothing leaves."""
    from dbmail.ops import dnscheck

    from .dnsstub import StubDNS

    dns = StubDNS()
    monkeypatch.setattr(dnscheck, "make_resolver", lambda: dns)
    return dns


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on loopback, and the site's settings pointed at it."""
    server = SMTPServer().start()
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = server.host, server.port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 2
    yield server
    server.stop()


def subprocess_env(smtp=None, **extra):
    """Environment for a manage.py child that uses this test run's database (and SMTP server)."""
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mailsite.test_settings",
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        EMAIL_TIMEOUT="2",
    )
    if smtp is not None:
        env["EMAIL_URL"] = smtp.url
    env.update({k: str(v) for k, v in extra.items()})
    return env


def manage(*args, env=None, **kwargs):
    """Run `manage.py ARGS` as a child process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 300),
        **kwargs,
    )


def start_manage(*args, env):
    """Start `manage.py ARGS` as a child process (text stdout and stderr piped); returns the Popen."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(predicate, seconds=60, step=0.02):
    """Poll `predicate` until it holds; the test fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


# --- Mailboxes: one private Dovecot for the session; each test gets its own IMAP user ---


@pytest.fixture(scope="session")
def dovecot():
    import shutil
    import tempfile

    from .dovecot import DOVECOT, Dovecot

    if not os.access(DOVECOT, os.X_OK):  # said plainly, as for Chromium, not as a KeyError from getpwnam
        pytest.fail(f"{DOVECOT} is missing: apt-get install dovecot-imapd (.ci/run does it)")
    root = tempfile.mkdtemp(prefix="mailsite-dovecot-")  # not pytest's tmp: Dovecot's own users must reach it
    server = Dovecot(root)
    # A pool of users made up front: Dovecot notices a changed passwd-file only now and then.
    users = {f"user{n:02d}": secrets.token_urlsafe(12) for n in range(60)}
    try:
        yield server.start(users)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def imap_user(dovecot):
    """(login, password) of an unused, empty mailbox on the session's Dovecot."""
    return dovecot.take_user()
