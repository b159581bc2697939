"""The ceiling: what one connection to the sink allows, without Django or a database.

`pipelined()` is the raw pipelined client the benchmark compares dbmail with:
prebuilt bytes, one connection, and RFC 2920 grouping across messages. After
the first envelope (MAIL, RCPT, DATA in one write), each write carries one
message's content, its final dot and the next message's envelope, so each
message costs one round trip; an MTA's own client (Postfix's smtp) talks to
a pipelining server the same way. Everything a message needs is built before
the clock starts: the dot-stuffed content and the envelope commands, so what
is measured is the wire, the kernel's loopback TCP and the server.

`smtplib_client()` is plain smtplib over one connection (MAIL, RCPT, DATA and
the content each wait for their answer: four round trips a message), kept for
reference: the benchmark used to call it the ceiling, which any pipelining
sender beats without being fast.

    messages = [(mail_from, [rcpt, ...], content_bytes), ...]
    accepted = pipelined("127.0.0.1", port, prepare(messages))
"""

import re
import smtplib
import socket

_LEADING_DOT = re.compile(rb"(?m)^\.")
CRLF = b"\r\n"


class WireError(Exception):
    """The server answered something other than what a clean run gets."""


def prepare(messages):
    """(envelope bytes, content-and-dot bytes, recipient count) per message: the work done before timing."""
    prepared = []
    for mail_from, rcpts, data in messages:
        envelope = b"MAIL FROM:<%s>\r\n" % mail_from.encode() + b"".join(
            b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts
        )
        body = _LEADING_DOT.sub(b"..", data)
        if not body.endswith(CRLF):
            body += CRLF
        prepared.append((envelope + b"DATA\r\n", body + b".\r\n", len(rcpts)))
    return prepared


class _Replies:
    """Reads SMTP replies (possibly several per segment) from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def read(self):
        """(code, text) of the next complete reply; multi-line replies are joined."""
        lines = []
        while True:
            end = self.buffer.find(b"\r\n")
            while end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise WireError("the server closed the connection")
                self.buffer += chunk
                end = self.buffer.find(b"\r\n")
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            lines.append(line[4:])
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def expect(self, code):
        got, text = self.read()
        if got != code:
            raise WireError(f"expected {code}, got {got} {text.decode('ascii', 'replace')}")
        return text


def pipelined(host, port, prepared, timeout=30):
    """Send every prepared message over one connection, one round trip each; returns how many were accepted."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    replies = _Replies(sock)
    try:
        replies.expect(220)
        sock.sendall(b"EHLO bench.wire\r\n")
        if b"PIPELINING" not in replies.expect(250).upper():
            raise WireError("the server does not offer PIPELINING")
        if not prepared:
            return 0
        sock.sendall(prepared[0][0])
        accepted = 0
        for i, (_, content, rcpts) in enumerate(prepared):
            replies.expect(250)  # MAIL
            for _ in range(rcpts):
                replies.expect(250)  # RCPT
            replies.expect(354)  # DATA
            following = prepared[i + 1][0] if i + 1 < len(prepared) else b"QUIT\r\n"
            sock.sendall(content + following)
            replies.expect(250)  # the message
            accepted += 1
        replies.expect(221)
        return accepted
    finally:
        sock.close()


def smtplib_client(host, port, messages, timeout=30):
    """Plain smtplib.sendmail over one connection; returns how many were accepted."""
    accepted = 0
    with smtplib.SMTP(host, port, timeout=timeout) as smtp:
        smtp.ehlo()
        for mail_from, rcpts, data in messages:
            if not smtp.sendmail(mail_from, rcpts, data):
                accepted += 1
    return accepted
