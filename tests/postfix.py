"""A private Postfix on loopback for the end-to-end tests and the MTA benchmark (Debian's postfix).

Everything it owns (config, queue, data, log) is under one temporary
directory, started with `postfix -c DIR start`, listening on 127.0.0.1 only
on a free port, relaying all mail to one SMTP server of ours (`relayhost`),
with queue timers of a second so that deferrals, retries and bounces happen
while a test waits. The list domain's routing to the gate is taken from
docs/mta.md itself (`docs_postfix_config`): the test checks what operators
are told to write.

    mta = Postfix(root, relay_port=sink.port, gate_env={...}).start()
    mta.port                      # submit here (EMAIL_HOST=127.0.0.1, EMAIL_PORT=mta.port)
    mta.wait_idle()               # until the queue is empty
    mta.log()                     # its maillog
    mta.stop()
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
POSTMAP = "/usr/sbin/postmap"
PIPE_USER = "nobody"  # pipe(8) refuses root and the mail owner; docs/mta.md's `mailsite` user stands here
LIST_DOMAIN = "lists.example.org"
AUTHSERV_ID = "mx.ourorg.example"  # docs/mta.md's example name of our MTA's Authentication-Results
QUEUE_ID = re.compile(r"queued as ([0-9A-Za-z]+)")

# Every service the instance needs, none chrooted (the queue is in a temporary directory). The smtpd
# listener and the pipe service come after these; the pipe service is docs/mta.md's.
MASTER_CF = """\
{listen}  inet  n  -  n  -  -  smtpd
pickup    unix  n  -  n  60  1  pickup
cleanup   unix  n  -  n  -  0  cleanup
qmgr      unix  n  -  n  300  1  qmgr
rewrite   unix  -  -  n  -  -  trivial-rewrite
bounce    unix  -  -  n  -  0  bounce
defer     unix  -  -  n  -  0  bounce
trace     unix  -  -  n  -  0  bounce
verify    unix  -  -  n  -  1  verify
flush     unix  n  -  n  1000?  0  flush
proxymap  unix  -  -  n  -  -  proxymap
smtp      unix  -  -  n  -  -  smtp
relay     unix  -  -  n  -  -  smtp
showq     unix  n  -  n  -  -  showq
error     unix  -  -  n  -  -  error
retry     unix  -  -  n  -  -  error
discard   unix  -  -  n  -  -  discard
local     unix  -  n  n  -  -  local
anvil     unix  -  -  n  -  1  anvil
scache    unix  -  -  n  -  1  scache
postlog   unix-dgram  n  -  n  -  1  postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.test
mydomain = mta.test
myorigin = $myhostname
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtpd_peername_lookup = no
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
# Seconds, not minutes: a deferred message is tried again at once, a bounce comes within a test.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = 0
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
smtp_connect_timeout = 5s
# The gate's settings reach pipe(8) through Postfix's environment, as a .env would on a real host.
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C {env_names}
export_environment = TZ MAIL_CONFIG LANG {env_names}
"""


def unavailable():
    """Why a private Postfix cannot run here, or None."""
    if not os.path.exists(POSTFIX):
        return f"{POSTFIX} is missing (apt-get install postfix; .ci/run installs it)"
    if os.geteuid() != 0:
        return "a private Postfix needs root to start (its master runs as root, then as the postfix user)"
    return None


def install():
    """Debian's postfix, without starting the system instance. Returns None, or why it could not."""
    if os.path.exists(POSTFIX):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "postfix is not installed and cannot be installed here (not root, or no apt-get)"
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:  # the package's scripts must not start a Postfix listening on port 25
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postfix"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode:
                return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
    finally:
        if ours:
            policy.unlink()
    if os.path.exists("/var/spool/postfix/pid/master.pid"):
        subprocess.run([POSTFIX, "stop"], capture_output=True)  # in case an init script ran anyway
    return None if os.path.exists(POSTFIX) else "apt-get install postfix did not install /usr/sbin/postfix"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def docs_postfix_config(python=sys.executable, tree=ROOT, user=PIPE_USER):
    """(master.cf service, main.cf lines, transport lines) exactly as docs/mta.md's Postfix section gives them.

    Only the site's paths and its user are replaced by this tree's; a code block starts with a comment
    naming the file it belongs in.
    """
    text = (ROOT / "docs" / "mta.md").read_text()
    section = text.split("\n### Postfix\n", 1)[1].split("\n### ", 1)[0]
    blocks = {}
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        first, _, rest = block.partition("\n")
        name = first.lstrip("# ").split()[0] if first.startswith("#") else "master.cf"
        blocks[Path(name).name] = rest if first.startswith("#") else block
    replacements = [
        ("/srv/mailsite/.venv/bin/python", python),
        ("/srv/mailsite", str(tree)),
        ("user=mailsite:mailsite", f"user={user}:{_group_of(user)}"),
    ]
    for name, block in blocks.items():
        for old, new in replacements:
            block = block.replace(old, new)
        blocks[name] = block
    return blocks["master.cf"], blocks["main.cf"], blocks["transport"]


def docs_header_checks(config_dir):
    """(main.cf line, header_checks file) as docs/mta.md gives them to remove forged Authentication-Results."""
    text = (ROOT / "docs" / "mta.md").read_text()
    block = next(b for b in re.findall(r"```\n(.*?)```", text, re.S) if "# /etc/postfix/header_checks" in b)
    main_part, _, checks = block.partition("# /etc/postfix/header_checks\n")
    main_line = main_part.replace("# /etc/postfix/main.cf\n", "").replace("/etc/postfix", str(config_dir))
    return main_line, checks


def _group_of(user):
    import grp
    import pwd

    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


class Postfix:
    def __init__(self, root, relay_port, gate_env=None, main_cf_extra=""):
        self.root = Path(root)
        self.config = self.root / "etc"
        self.host = "127.0.0.1"
        self.port = free_port()
        self.relay_port = relay_port
        self.gate_env = dict(gate_env or {})
        self.main_cf_extra = main_cf_extra
        self.files = {}  # more files of its configuration directory (name: text), as main_cf_extra names them
        self.started = False
        self.log_start = 0
        self.python = sys.executable  # the gate's interpreter in the pipe service

    def start(self):
        self.root.chmod(0o755)  # the postfix user and the pipe's user must reach the queue and the log
        for sub in ("etc", "queue", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "data", "postfix")
        master_service, main_lines, transport = docs_postfix_config(python=self.python, tree=ROOT, user=PIPE_USER)
        transport_path = "/etc/postfix/transport"
        main_lines = main_lines.replace(transport_path, str(self.config / "transport"))
        (self.config / "master.cf").write_text(MASTER_CF.format(listen=f"{self.host}:{self.port}") + master_service)
        (self.config / "main.cf").write_text(
            MAIN_CF.format(
                root=self.root,
                relay_port=self.relay_port,
                env_names=" ".join(sorted(self.gate_env)),
            )
            + main_lines
            + self.main_cf_extra
        )
        (self.config / "transport").write_text(transport)
        for name, text in self.files.items():
            (self.config / name).write_text(text)
        self._run(POSTMAP, str(self.config / "transport"))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.gate_env}
        started = self._run(POSTFIX, "-c", str(self.config), "start", env=env, check=False)
        if started.returncode:
            # its checks (postfix check) log to the maillog, not to stderr
            raise RuntimeError(f"postfix start failed: {started.stderr.strip()} {self.log()}")
        self.started = True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"220"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postfix did not answer on {self.host}:{self.port}: {self.log()}")

    def _run(self, *command, check=True, env=None):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
        return done

    def postconf(self, name):
        return self._run(POSTCONF, "-c", str(self.config), "-h", name).stdout.strip()

    def queue(self):
        """The queue ids now in Postfix's queue (incoming, active, deferred)."""
        out = self._run(POSTQUEUE, "-c", str(self.config), "-j").stdout
        return re.findall(r'"queue_id": "([0-9A-Za-z]+)"', out)

    def flush(self):
        """Try every deferred message now (postqueue -f)."""
        self._run(POSTQUEUE, "-c", str(self.config), "-f")

    def wait_idle(self, timeout=30):
        """Until the queue is empty; False if it is not by then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue():
                return True
            time.sleep(0.1)
        return False

    def wait_log(self, pattern, timeout=30, count=1, flush_every=None):
        """Until `pattern` (a regular expression) matches `count` lines of the maillog; those lines.

        With `flush_every` (seconds), the deferred mail is tried again that often meanwhile: now and
        then a message deferred while the queue manager was scanning waits for a later scan (seen
        once in twenty runs), and a test need not wait for that.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        flushed = time.monotonic()
        while True:
            lines = [line for line in self.log(full=True).splitlines() if regex.search(line)]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            if flush_every and time.monotonic() - flushed > flush_every:
                self.flush()
                flushed = time.monotonic()
            time.sleep(0.1)

    def mark(self):
        """From now on log() and wait_log() read only what is logged after this point."""
        path = self.root / "maillog"
        self.log_start = path.stat().st_size if path.exists() else 0

    def log(self, full=False):
        """The maillog since mark(): whole, or its last 4,000 characters (for an assertion's message)."""
        path = self.root / "maillog"
        if not path.exists():
            return ""
        with path.open("rb") as file:
            file.seek(self.log_start)
            text = file.read().decode(errors="replace")
        return text if full else text[-4000:]

    def stop(self):
        if not self.started:
            return
        pid_file = self.root / "queue" / "pid" / "master.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        # abort, not stop: nothing of a test instance needs a graceful end, and stop waits for idle smtpd.
        self._run(POSTFIX, "-c", str(self.config), "abort", check=False)
        deadline = time.monotonic() + 10
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.started = False

    def clear(self):
        """Delete every message in the queue (postsuper -d ALL)."""
        self._run("/usr/sbin/postsuper", "-c", str(self.config), "-d", "ALL", check=False)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gate_python(user=PIPE_USER):
    """(python, environment, problem): the interpreter pipe(8) runs the gate with as `user`.

    This tree's own Python where `user` may run it; else, when that one lies where only root can
    reach it (a pyenv under /root), the system's Python of the same minor version with this
    virtualenv's packages on PYTHONPATH. `problem` says why neither can run the gate, or is None.
    """
    import site

    candidates = [(sys.executable, {})]
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if os.path.exists(system) and system != sys.executable:
        candidates.append((system, {"PYTHONPATH": os.pathsep.join(site.getsitepackages())}))
    problems = []
    for python, env in candidates:
        try:
            done = subprocess.run(
                [python, "-c", "import django, mailgate.gate"],
                user=user,
                cwd=ROOT,
                env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            problems.append(f"{python}: {exc}")
            continue
        if done.returncode == 0:
            return python, env, None
        problems.append(f"{python}: {done.stderr.strip()[-300:]}")
    return None, {}, f"the gate cannot run as {user} from {ROOT} (pipe(8) refuses root): {'; '.join(problems)}"


# --- pytest fixtures (tests/conftest.py loads this module as a plugin) ---------------------------------

GATE_MAX_BYTES = 100_000  # MAILGATE_MAX_BYTES of the gate behind the private Postfix
MESSAGE_SIZE_LIMIT = 1_000_000  # its message_size_limit: above the gate's, as docs/mta.md asks


@pytest.fixture(scope="session")
def postfix_sink():
    """The scripted SMTP server every message the private Postfix relays ends at."""
    from .smtpserver import SMTPServer

    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postfix_instance(django_db_setup, postfix_sink):
    """One private Postfix for the session, its list domain piped into the gate of this test database.

    The gate reaches PostgreSQL through a proxy (`mta.db_proxy`) that a test may stop: the database
    unreachable, as the gate sees it.
    """
    import tempfile

    from django.conf import settings
    from django.db import connection

    from .tracking_support import TCPProxy

    reason = install() or unavailable()
    if reason:
        pytest.skip(f"no private Postfix: {reason}")
    db = connection.settings_dict
    proxy = TCPProxy(target=(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))).start()
    root = tempfile.mkdtemp(prefix="mailsite-postfix-")  # not pytest's tmp: the postfix user must reach it
    mta = Postfix(root, relay_port=postfix_sink.port, main_cf_extra=f"message_size_limit = {MESSAGE_SIZE_LIMIT}\n")
    # docs/mta.md's rule against forged Authentication-Results of our MTA (AUTHSERV_ID), as operators write it.
    header_checks_line, mta.files["header_checks"] = docs_header_checks(mta.config)
    mta.main_cf_extra += header_checks_line
    mta.db_proxy = proxy
    python, python_env, mta.gate_problem = gate_python()
    mta.python = python or sys.executable
    mta.gate_env = {
        "DJANGO_SETTINGS_MODULE": "mailsite.test_settings",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@127.0.0.1:{proxy.port}/{db['NAME']}",
        "SECRET_KEY": settings.SECRET_KEY,  # VERP addresses are signed with it
        "EMAIL_URL": f"smtp://{mta.host}:{mta.port}",  # a list forward goes out through this Postfix
        "EMAIL_TIMEOUT": "5",
        "DBMAIL_VERP_DOMAIN": LIST_DOMAIN,
        "MAILGATE_MAX_BYTES": str(GATE_MAX_BYTES),
        "MAILGATE_TRUSTED_AUTHSERV_IDS": AUTHSERV_ID,
        "PYTHONDONTWRITEBYTECODE": "1",
        **python_env,
    }
    try:
        try:
            mta.start()
        except RuntimeError as exc:
            pytest.skip(f"the private Postfix did not start: {exc}")
        yield mta
    finally:
        mta.stop()
        proxy.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postfix(postfix_instance, postfix_sink, settings):
    """The private Postfix, an empty queue and sink, and the site's outgoing mail pointed at it."""
    mta = postfix_instance
    postfix_sink.reset()
    postfix_sink.connections = 0
    if mta.db_proxy.listener.fileno() < 0:  # a test before stopped it and failed before starting it again
        mta.db_proxy.start()
    mta.mark()
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = mta.host, mta.port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    settings.DBMAIL_VERP_DOMAIN = LIST_DOMAIN
    yield mta
    # What a test set going (a notice the gate sends, a bounce) lands before the next test's sink is fresh.
    mta.wait_idle(timeout=5)
    mta.clear()
    postfix_sink.reset()


@pytest.fixture
def postfix_gate(postfix):
    """The private Postfix, where its pipe to the gate can run (as the unprivileged PIPE_USER)."""
    if postfix.gate_problem:
        pytest.skip(postfix.gate_problem)
    return postfix
