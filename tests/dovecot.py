"""A private Dovecot IMAP server on loopback for the mailbox tests (Debian's dovecot-imapd).

Everything it writes (sockets, state, log, Maildirs) is under one temporary
directory; users log in with plain passwords, without TLS, on 127.0.0.1 only.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from imapclient import IMAPClient

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 0
first_valid_gid = 0
default_internal_user = {internal_user}
default_login_user = {login_user}
default_internal_group = {group}
mail_location = maildir:{root}/mail/%u
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Dovecot:
    def __init__(self, root):
        self.root = Path(root)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.process = None
        self.users = {}

    def start(self, users):
        """`users`: {login: password}. Returns self once the server answers."""
        import grp
        import pwd

        self.users = dict(users)
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        uid, gid = os.getuid(), os.getgid()
        config = self.root / "dovecot.conf"
        if uid == 0:  # Dovecot refuses root for its processes and mail: use the package's own users
            internal_user, login_user, group = "dovecot", "dovenull", "dovecot"
            self.root.chmod(0o755)
            uid, gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
            for sub in ("mail", "home"):
                (self.root / sub).mkdir(exist_ok=True)
                os.chown(self.root / sub, uid, gid)
        else:
            internal_user = login_user = pwd.getpwuid(uid).pw_name
            group = grp.getgrgid(gid).gr_name
        self.mail_uid, self.mail_gid = uid, gid
        self._write_passwd()
        config.write_text(
            CONFIG.format(
                root=self.root, port=self.port, internal_user=internal_user, login_user=login_user, group=group
            )
        )
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.process.stderr.read().decode()} {self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dovecot did not answer on {self.host}:{self.port}: {self.log()}")

    def _write_passwd(self):
        home = self.root / "home"
        lines = [
            f"{login}:{{PLAIN}}{password}:{self.mail_uid}:{self.mail_gid}::{home}/{login}::\n"
            for login, password in self.users.items()
        ]
        path = self.root / "passwd"
        temporary = path.with_suffix(".new")
        temporary.write_text("".join(lines))
        temporary.chmod(0o644)
        temporary.replace(path)

    def take_user(self):
        """A user no test has had yet."""
        self.taken = getattr(self, "taken", set())
        login = next(login for login in self.users if login not in self.taken)
        self.taken.add(login)
        return login, self.users[login]

    def log(self):
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, login):
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        client.login(login, self.users[login])
        return client

    def append(self, login, folder, raw):
        with self.client(login) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, raw)

    def uids(self, login, folder):
        with self.client(login) as client:
            client.select_folder(folder, readonly=True)
            return client.search(["ALL"])

    def recreate(self, login, folder):
        """Delete and create the folder again: the server gives it a new UIDVALIDITY."""
        with self.client(login) as client:
            client.delete_folder(folder)
            client.create_folder(folder)

    def uidvalidity(self, login, folder):
        with self.client(login) as client:
            return client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"]
