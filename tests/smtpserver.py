"""A real SMTP server on loopback for tests (aiosmtpd), with scripted failures.

Per recipient address (the step used depends on the attempt):

    server.script("ann@example.org", "451 4.3.0 try later", "250")  # first try deferred, then accepted
    server.script("bob@example.org", "550 5.1.1 no such user")       # refused every time
    server.script("cy@example.org", "timeout")                        # no answer to the message in time
    server.script("di@example.org", "disconnect")                     # drops the connection at the end
    server.script("ed@example.org", "554 5.7.1 no", stage="data")     # refuses the DATA command
    server.script("club@example.org", "553 5.7.1 no", stage="mail")   # refuses this sender at MAIL FROM
    server.script("@gmail.com", "421 4.7.0 try again later")          # every recipient of a domain

For every connection or transaction, whoever the recipient:

    server.fault("connect", "421 4.3.2 busy", "250")  # the first greeting refused, then fine
    server.fault("mail", "553 5.7.1 sender refused")    # MAIL FROM refused every time
    server.clear_faults()                               # the fault clears: every rule and fault gone

Stages: "connect" (the greeting), "ehlo" (EHLO and HELO), "mail", "rcpt"
(per address only), "data" (the DATA command), "message" (the answer after
the final dot). Steps: "250" (no fault), a reply such as "421 4.7.0 closing"
(a 421 also closes the connection, as real servers do), "timeout" (no answer
for `timeout_seconds`), "disconnect" (the connection dropped; at "message"
the message is not kept), and at "message" only: "ack-lost" (the message is
kept, then the connection is dropped before the 250) and "late" (kept, and
the 250 comes after `timeout_seconds`). A rule's steps are used one per
occurrence; the last step repeats.

`pipelining` and `smtputf8` choose what EHLO offers; `max_size` is the
SIZE it announces (a bigger MAIL FROM ... SIZE= gets 552).

A submission server, as a mail provider runs one: AUTH is required and each
login may name only its own addresses in MAIL FROM:

    SMTPServer(logins={"ann": "secret"}, may_send_as={"ann": {"ann@example.net"}})
"""

import asyncio
import email
import socket
import threading
import time
from dataclasses import dataclass, field
from email import policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "message")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    data: bytes
    mail_options: list = field(default_factory=list)
    at: float = 0.0  # time.time() when it was kept

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
        return None if step is None or step.startswith("250") else step


class _ScriptedSMTP(SMTP):
    """aiosmtpd's server, with faults at the greeting and at the DATA command, where it has no hooks."""

    def __init__(self, model, *args, **kwargs):
        self.model = model
        super().__init__(*args, **kwargs)

    async def _handle_client(self):
        with self.model.lock:
            self.model.connections += 1
        step = self.model.next_fault("connect")
        if step == "timeout":
            await asyncio.sleep(self.model.timeout_seconds)
        elif step == "disconnect":
            self.transport.abort()
            return
        elif step:
            await self.push(step)  # a greeting other than 220: the client gives up, and so do we
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg):
        if self.envelope.rcpt_tos and self.envelope.mail_from:
            steps = [self.model.next_fault("data")]
            steps += [self.model.next_rule("data", address) for address in self.envelope.rcpt_tos]
            step = next((s for s in steps if s), None)
            if step:
                answer = await self.model.apply(step, self)
                if answer:
                    self.model.refused.append((",".join(self.envelope.rcpt_tos), answer))
                    await self.push(answer)  # the envelope stays: a client must RSET now
                return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    def __init__(self, model, handler, **kwargs):
        self.model = model
        super().__init__(handler, **kwargs)

    def factory(self):
        return _ScriptedSMTP(self.model, self.handler, **self.SMTP_kwargs)


class ScriptedHandler:
    def __init__(self, server):
        self.server = server

    async def handle_EHLO(self, smtp, session, envelope, hostname, responses):
        session.host_name = hostname
        session.ehlo_fault = step = self.server.next_fault("ehlo")
        if step:
            answer = await self.server.apply(step, smtp)
            return [answer] if answer else []
        if self.server.pipelining:  # as Postfix and Exim do; turn off to test the classic path
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(self, smtp, session, envelope, hostname):
        step = getattr(session, "ehlo_fault", None)
        if step and not self.server.helo_after_ehlo:
            return await self.server.apply(step, smtp) or "421 4.4.2 gone"
        session.host_name = hostname
        return f"250 {smtp.hostname}"

    async def handle_MAIL(self, smtp, session, envelope, address, mail_options):
        if self.server.may_send_as:
            login = session.auth_data if session.authenticated else None
            if address.lower() not in self.server.may_send_as.get(login, set()):
                self.server.refused.append((address, "553"))
                return "553 5.7.1 Sender address rejected: not owned by user"
        step = self.server.next_fault("mail") or self.server.next_rule("mail", address)
        if step:
            answer = await self.server.apply(step, smtp)
            if answer:
                self.server.refused.append((address, answer))
                return answer  # refused: no sender is set, so RCPT and DATA get 503
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):
        step = self.server.next_rule("rcpt", address)
        answer = await self.server.apply(step, smtp)
        if answer:
            self.server.refused.append((address, answer))
            return answer
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_RSET(self, smtp, session, envelope):
        with self.server.lock:
            self.server.rsets += 1
        return "250 2.0.0 OK"

    async def handle_DATA(self, smtp, session, envelope):
        steps = [self.server.next_fault("message")]
        steps += [self.server.next_rule("message", address) for address in envelope.rcpt_tos]
        step = next((s for s in steps if s), None)
        if step in ("ack-lost", "late"):
            serial = self.server.keep(envelope)
            if step == "ack-lost":
                smtp.transport.abort()
                return "421 4.4.2 gone"
            await asyncio.sleep(self.server.timeout_seconds)
            return f"250 2.0.0 Ok: queued as Q{serial:08X}"
        answer = await self.server.apply(step, smtp)
        if answer:
            self.server.refused.append((",".join(envelope.rcpt_tos), answer))
            return answer
        if self.server.delay:
            await asyncio.sleep(self.server.delay)
        serial = self.server.keep(envelope)
        return f"250 2.0.0 Ok: queued as Q{serial:08X}"


@dataclass
class SMTPServer:
    host: str = "127.0.0.1"
    port: int = 0
    delay: float = 0.0  # seconds before each DATA answer (to keep a sender mid-batch)
    timeout_seconds: float = 5.0
    pipelining: bool = True
    smtputf8: bool = True
    logins: dict = field(default_factory=dict)  # login -> password; when set, AUTH is required
    may_send_as: dict = field(default_factory=dict)  # login -> the MAIL FROM addresses it may use
    max_size: int = 0  # the SIZE announced (0: aiosmtpd's default, 32 MiB)
    helo_after_ehlo: bool = False  # an "ehlo" fault refuses EHLO only: HELO then works (an old server)
    received: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    rules: dict = field(default_factory=dict)  # (stage, address) -> _Rule
    faults: dict = field(default_factory=dict)  # stage -> _Rule
    connections: int = 0
    rsets: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self):
        if not self.port:
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        options = {"enable_SMTPUTF8": self.smtputf8}
        if self.max_size:
            options["data_size_limit"] = self.max_size
        if self.logins:  # plain-text AUTH is fine on loopback; real servers insist on TLS first
            options.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=False)
        self.controller = _Controller(self, ScriptedHandler(self), hostname=self.host, port=self.port, **options)
        self.controller.start()
        # aiosmtpd connects once itself to see the server up: that connection is not the sender's.
        deadline = time.monotonic() + 2
        while not self.connections and time.monotonic() < deadline:
            time.sleep(0.005)
        self.connections = 0
        return self

    def stop(self):
        self.controller.stop()

    def _authenticate(self, smtp, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode("utf-8", "replace")
        password = self.logins.get(login)
        ok = password is not None and auth_data.password.decode("utf-8", "replace") == password
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def script(self, address, *steps, stage=None):
        """Answers for one recipient: at RCPT (default), the DATA command ("data") or the message's end.

        With stage="mail", `address` is a sender: the answers to its MAIL FROM.
        """
        if stage is None:
            stage = "message" if steps and steps[0] in ("timeout", "disconnect", "ack-lost", "late") else "rcpt"
        assert stage in ("mail", "rcpt", "data", "message"), stage
        self.rules[(stage, address.lower())] = _Rule(list(steps), stage)

    def fault(self, stage, *steps):
        """Answers at `stage` for every connection or transaction, whoever the recipient."""
        assert stage in STAGES and stage != "rcpt", stage
        self.faults[stage] = _Rule(list(steps), stage)

    def clear_faults(self):
        self.rules.clear()
        self.faults.clear()

    def next_fault(self, stage):
        rule = self.faults.get(stage)
        return rule.next() if rule else None

    def next_rule(self, stage, address):
        address = address.lower()
        rule = self.rules.get((stage, address)) or self.rules.get((stage, "@" + address.rpartition("@")[2]))
        return rule.next() if rule else None

    async def apply(self, step, smtp):
        """Act out `step`; the reply to give, or None to go on normally."""
        if not step:
            return None
        if step == "timeout":
            await asyncio.sleep(self.timeout_seconds)
            return "451 4.4.2 too late"
        if step == "disconnect":
            smtp.transport.abort()
            return "421 4.4.2 gone"
        if step.startswith("421"):
            smtp.loop.call_soon(smtp.transport.close)  # after the reply has gone, as real servers do
        return step

    def keep(self, envelope):
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.content,
                    list(envelope.mail_options),
                    time.time(),
                )
            )
            return len(self.received)

    def reset(self):
        with self.lock:
            self.received.clear()
            self.refused.clear()
        self.clear_faults()

    def to(self, address):
        """Messages delivered to `address`."""
        return [m for m in self.received if address in m.rcpt_tos]

    @property
    def url(self):
        return f"smtp://{self.host}:{self.port}"
