"""A real SMTP server on loopback for tests (aiosmtpd), with scripted failures.

    server.script("ann@example.org", "451 4.3.0 try later", "250")  # first try deferred, then accepted
    server.script("bob@example.org", "550 5.1.1 no such user")       # refused every time
    server.script("cy@example.org", "timeout")                        # never answers DATA in time
    server.script("di@example.org", "disconnect")                     # drops the connection

A rule's steps are used one per attempt; the last step repeats. Codes are
answered at RCPT (as real servers refuse recipients), except "timeout",
"disconnect" and codes listed with stage="data".

A submission server, as a mail provider runs one: AUTH is required and each
login may name only its own addresses in MAIL FROM:

    SMTPServer(logins={"ann": "secret"}, may_send_as={"ann": {"ann@example.net"}})
"""

import asyncio
import email
import socket
import threading
from dataclasses import dataclass, field
from email import policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    data: bytes

    @property
    def message(self):
        return email.message_from_bytes(self.data, policy=policy.default)

    @property
    def message_id(self):
        return self.message["Message-ID"]


@dataclass
class _Rule:
    steps: list
    stage: str
    used: int = 0

    def next(self):
        step = self.steps[min(self.used, len(self.steps) - 1)]
        self.used += 1
        return step


class ScriptedHandler:
    def __init__(self, server):
        self.server = server

    def _act(self, stage, session, address):
        rule = self.server.rules.get(address.lower())
        if rule is None or rule.stage != stage:
            return None
        return rule.next()

    async def _apply(self, step, smtp):
        if step is None or step.startswith("250"):
            return None
        if step == "timeout":
            await asyncio.sleep(self.server.timeout_seconds)
            return "451 4.4.2 too late"
        if step == "disconnect":
            smtp.transport.abort()
            return "421 4.4.2 gone"
        return step

    async def handle_EHLO(self, smtp, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.server.pipelining:  # as Postfix and Exim do; turn off to test the classic path
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, smtp, session, envelope, address, mail_options):
        if self.server.may_send_as:
            login = session.auth_data if session.authenticated else None
            if address.lower() not in self.server.may_send_as.get(login, set()):
                self.server.refused.append((address, "553"))
                return "553 5.7.1 Sender address rejected: not owned by user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):
        step = self._act("rcpt", session, address)
        answer = await self._apply(step, smtp)
        if answer:
            self.server.refused.append((address, answer))
            return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp, session, envelope):
        for address in envelope.rcpt_tos:
            answer = await self._apply(self._act("data", session, address), smtp)
            if answer:
                self.server.refused.append((address, answer))
                return answer
        if self.server.delay:
            await asyncio.sleep(self.server.delay)
        with self.server.lock:
            self.server.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            serial = len(self.server.received)
        return f"250 2.0.0 Ok: queued as Q{serial:08X}"


@dataclass
class SMTPServer:
    host: str = "127.0.0.1"
    port: int = 0
    delay: float = 0.0  # seconds before each DATA answer (to keep a sender mid-batch)
    timeout_seconds: float = 5.0
    pipelining: bool = True
    received: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    rules: dict = field(default_factory=dict)
    logins: dict = field(default_factory=dict)  # login -> password; when set, AUTH is required
    may_send_as: dict = field(default_factory=dict)  # login -> the MAIL FROM addresses it may use
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self):
        if not self.port:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        auth = {}
        if self.logins:  # plain-text AUTH is fine on loopback; real servers insist on TLS first
            auth = dict(authenticator=self._authenticate, auth_required=True, auth_require_tls=False)
        self.controller = Controller(ScriptedHandler(self), hostname=self.host, port=self.port, **auth)
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()

    def _authenticate(self, smtp, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace")
        password = self.logins.get(login)
        ok = password is not None and auth_data.password.decode("utf-8", "replace") == password
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def script(self, address, *steps, stage=None):
        if stage is None:
            stage = "data" if steps and steps[0] in ("timeout", "disconnect") else "rcpt"
        self.rules[address.lower()] = _Rule(list(steps), stage)

    def reset(self):
        with self.lock:
            self.received.clear()
            self.refused.clear()
        self.rules.clear()

    def to(self, address):
        """Messages delivered to `address`."""
        return [m for m in self.received if address in m.rcpt_tos]

    @property
    def url(self):
        return f"smtp://{self.host}:{self.port}"
