"""Django's SMTP backend, with what a bulk sender needs on top.

- It keeps the server's final reply to each message. "250 2.0.0 Ok: queued
  as 4Bx7.." names the MTA's queue id, which is how a Postfix or Exim log
  line is matched back to our email.
- When the server offers PIPELINING (RFC 2920; Postfix and Exim do), MAIL,
  RCPT and DATA go out in one write and their replies are read together; and
  when the caller names the next message, its MAIL, RCPT and DATA go out with
  this message's final dot: one round trip per message instead of four.
- Every failed transaction ends with RSET (or with closing the connection,
  after a 421 or when RSET itself fails), with or without PIPELINING, so the
  next message never meets "503 nested MAIL command".
- Each failure says at which step of the conversation it came, because that
  decides whose fault it is (dbmail.send.retry): the exceptions are smtplib's
  own, with a `stage` attribute ("connect", "ehlo", "starttls", "auth",
  "mail", "rcpt", "data", "message"), and two kinds of their own: the DATA
  command refused (DataRefused: nothing of the message went out) and the
  answer lost after the final dot (AckLost: the message may have been
  delivered).
- SMTPUTF8 (RFC 6531) is asked for when the caller says the message needs it.
- Replies are read from a buffer of our own (_BulkSMTP.getreply) rather than
  line by line through smtplib's file object: with pipelining the four
  replies of a message usually arrive in one segment, and are parsed from it
  in one pass. What a reply means, and every failure (a lost connection, a
  line too long, a garbled code), is as smtplib's getreply has it.
- A plain (not TLS) connection's reads and writes wait in the kernel
  (SO_RCVTIMEO / SO_SNDTIMEO on a blocking socket, set_socket_timeout) rather
  than through Python's socket timeout, which polls before every recv and
  send: one system call and one hand-over of the GIL fewer each. Connecting
  keeps Python's timeout; a read that times out says "timed out" as before.

Everything else is Django's own backend, so EMAIL_* settings mean what
Django's documentation says.
"""

import re
import smtplib
import socket
import ssl
import struct
import sys

from django.core.mail.backends.smtp import EmailBackend

from dbmail.exceptions import AckLost, DataRefused, MessageRefused

__all__ = ["AckLost", "DataRefused", "MessageRefused", "SMTPBackend"]

_LEADING_DOT = re.compile(rb"(?m)^\.")
# Whether any line after the first starts with a dot: a regex finds it in a fraction of the time
# bytes.__contains__ takes for a two-byte needle (4.5 µs for a 2 KB message, once a message).
_DOT_AFTER_LINE_END = re.compile(rb"\n\.")
_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")
_CRLF = b"\r\n"
_ONE_WRITE = 1 << 20
# struct timeval as Linux has it (two longs). Elsewhere, and for TLS, sockets keep Python's timeouts.
_TIMEVAL = struct.Struct("@ll")
_KERNEL_TIMEOUTS = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVTIMEO")


def set_socket_timeout(sock, seconds):
    """Bound each read and each write on `sock` to `seconds` (None: wait as long as it takes).

    A plain socket is left blocking with the kernel's timeouts: with Python's own, every recv and
    send polls first (a system call, and the GIL released and taken again, each a chance for the
    database thread to take it over), about 10 µs a message. A recv that times out then raises
    BlockingIOError (EAGAIN), which _BulkSMTP._readline reports as the timeout it is; sendall
    raises it too, and smtplib makes any failed send a lost connection, as before. The kernel's
    bound is per system call: a server that takes a byte now and then keeps a large write going
    (Python bounds the whole sendall), one that stops reading does not.
    A TLS socket keeps Python's timeout: on a blocking socket, the ssl module retries a read that
    met EAGAIN (OpenSSL's "want read") for ever, and would never time out.
    """
    if not _KERNEL_TIMEOUTS or isinstance(sock, ssl.SSLSocket):
        sock.settimeout(seconds)
        return
    if seconds is None:
        bound = _TIMEVAL.pack(0, 0)  # zero: no bound
    else:
        whole = int(seconds)
        bound = _TIMEVAL.pack(whole, max(int((seconds - whole) * 1_000_000), 0 if whole else 1))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
    sock.settimeout(None)  # blocking: no poll before each call


def socket_timeout(sock):
    """The bound set_socket_timeout gave `sock`'s reads (None: none)."""
    seconds = sock.gettimeout()
    if seconds is not None or not _KERNEL_TIMEOUTS or isinstance(sock, ssl.SSLSocket):
        return seconds
    whole, micro = _TIMEVAL.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.size))
    return whole + micro / 1_000_000 if whole or micro else None


def _quoteaddr(address):
    # smtplib.quoteaddr parses every address with the email package; a plain one needs no parsing.
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _staged(exc, stage):
    if getattr(exc, "stage", None) is None:
        exc.stage = stage
    return exc


class _BulkSMTP:
    last_reply = None
    # The next message's MAIL, RCPT and DATA, written after this one's final dot (RFC 2920 lets a
    # client go on without waiting for the dot's answer): one round trip a message instead of two.
    _ahead = None
    _ahead_of = None  # ((from, [to], mail options, rcpt options), message bytes, envelope) of `_ahead`
    # What the server sent that no reply has consumed yet, and the socket it came from: a new socket
    # (a reconnection, or STARTTLS, after which nothing sent in the clear may be believed) starts empty.
    _rbuf = b""
    _rsock = None

    def close(self):
        self._ahead = self._ahead_of = None
        self._rbuf, self._rsock = b"", None
        super().close()

    def _readline(self):
        """The next line from the server, as smtplib's file.readline(_MAXLINE + 1) would return it."""
        limit = smtplib._MAXLINE + 1
        buf = self._rbuf
        while True:
            end = buf.find(b"\n", 0, limit)
            if end >= 0:
                self._rbuf = buf[end + 1 :]
                return buf[: end + 1]
            if len(buf) >= limit:
                self._rbuf = buf[limit:]
                return buf[:limit]
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:  # the kernel's timeout (set_socket_timeout): what Python's says
                raise TimeoutError("timed out") from None
            if not chunk:  # the end of the stream: what is left is the last (partial) line
                self._rbuf = b""
                return buf
            buf += chunk
            self._rbuf = buf

    def getreply(self):
        """(code, text) of the server's next reply, as smtplib's getreply (-1 for a garbled code)."""
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        if self._rsock is not self.sock:
            self._rsock, self._rbuf = self.sock, b""
        lines = []
        while True:
            try:
                line = self._readline()
            except OSError as exc:
                self.close()
                raise smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}")  # noqa: B904 (as smtplib)
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            if len(line) > smtplib._MAXLINE:
                self.close()
                raise smtplib.SMTPResponseException(500, "Line too long.")
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                code = -1  # as smtplib: no continuation line is read after a broken one
                break
            if line[3:4] != b"-":
                break
        return code, lines[0] if len(lines) == 1 else b"\n".join(lines)

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)  # connecting waits with Python's timeout
        set_socket_timeout(sock, sock.gettimeout())  # the rest with the kernel's (not for SMTPS)
        return sock

    def starttls(self, *args, **kwargs):
        if self.sock is not None:
            self.sock.settimeout(socket_timeout(self.sock))  # TLS needs Python's timeout (set_socket_timeout)
        try:
            return super().starttls(*args, **kwargs)
        except OSError as exc:
            raise _staged(exc, "ehlo" if isinstance(exc, smtplib.SMTPHeloError) else "starttls")

    def login(self, *args, **kwargs):
        try:
            return super().login(*args, **kwargs)
        except OSError as exc:
            raise _staged(exc, "ehlo" if isinstance(exc, smtplib.SMTPHeloError) else "auth")

    def _envelope(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        """(MAIL line, RCPT lines, encoding) of one message."""
        options = list(mail_options)
        utf8 = any(o.upper() == "SMTPUTF8" for o in options)
        if self.has_extn("size") and not any(o.upper().startswith("SIZE=") for o in options):
            options.append(f"SIZE={len(msg)}")
        encoding = "utf-8" if utf8 else self.command_encoding
        rcpt_tail = "".join(" " + o for o in rcpt_options)
        mail = f"MAIL FROM:{_quoteaddr(from_addr)}" + "".join(" " + o for o in options)
        return mail, [f"RCPT TO:{_quoteaddr(a)}{rcpt_tail}" for a in to_addrs], encoding

    @staticmethod
    def _group(mail, rcpts, encoding):
        return "".join(c + "\r\n" for c in [mail, *rcpts, "DATA"]).encode(encoding)

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=(), then=None):
        """smtplib's sendmail, pipelined; `then`: the next message's (from, to, msg, mail_options, rcpt_options).

        With `then` (and a server that offers PIPELINING), the next message's MAIL, RCPT and
        DATA go out in the same write as this message's final dot; the next call must be for
        that message, whose envelope is then not written again. A caller that does not make it
        must abort the connection (SMTPBackend.close does): its DATA may already be open.
        """
        try:
            self.ehlo_or_helo_if_needed()
        except OSError as exc:
            raise _staged(exc, "ehlo")
        to_addrs = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
        if isinstance(msg, str):
            msg = smtplib._fix_eols(msg).encode("ascii")
        ahead, self._ahead = self._ahead, None
        ahead_of, self._ahead_of = self._ahead_of, None
        announced = (
            ahead is not None
            and ahead_of is not None
            and ahead_of[1] is msg
            and ahead_of[0] == (from_addr, to_addrs, mail_options, rcpt_options)
        )
        if announced:
            mail, rcpts, encoding = ahead_of[2]  # the call announced with the last message: its envelope went out
        else:
            mail, rcpts, encoding = self._envelope(from_addr, to_addrs, msg, mail_options, rcpt_options)
        if ahead is not None and not announced and ahead != self._group(mail, rcpts, encoding):
            # The commands on their way are another message's: this connection cannot go on.
            self.close()
            raise _staged(smtplib.SMTPServerDisconnected("the pipelined envelope was another message's"), "mail")
        try:
            if self.has_extn("pipelining"):
                mail_reply, rcpt_replies, data_reply = self._pipelined(mail, rcpts, encoding, written=ahead is not None)
            else:
                mail_reply, rcpt_replies, data_reply = self._one_by_one(mail, rcpts, encoding)
        except OSError as exc:
            raise _staged(exc, "mail")  # the connection broke before the message went out

        if len(to_addrs) == 1 and len(rcpt_replies) == 1 and rcpt_replies[0][0] in (250, 251):
            refused = {}  # the bulk path's one recipient, accepted: what the comprehensions below make of it
        else:
            refused = {a: r for a, r in zip(to_addrs, rcpt_replies, strict=False) if r[0] not in (250, 251)}
            refused.update(
                {a: (421, b"not tried: the server closed the session") for a in to_addrs[len(rcpt_replies) :]}
            )
        if mail_reply[0] != 250:
            self._after_failure(mail_reply[0])
            raise _staged(smtplib.SMTPSenderRefused(mail_reply[0], mail_reply[1], from_addr), "mail")
        if any(code == 421 for code, _ in refused.values()) or len(refused) == len(to_addrs):
            self._after_failure(421 if any(code == 421 for code, _ in refused.values()) else 0)
            raise _staged(smtplib.SMTPRecipientsRefused(refused), "rcpt")
        if data_reply[0] != 354:
            self._after_failure(data_reply[0])
            raise DataRefused(*data_reply)

        body = _LEADING_DOT.sub(b"..", msg) if msg.startswith(b".") or _DOT_AFTER_LINE_END.search(msg) else msg
        end = b"." + _CRLF if body.endswith(_CRLF) else _CRLF + b"." + _CRLF
        following = b""
        if then is not None and self.has_extn("pipelining"):
            then_from, then_to, then_msg, then_mail_options, then_rcpt_options = then
            then_to = [then_to] if isinstance(then_to, str) else list(then_to)
            envelope = self._envelope(then_from, then_to, then_msg, then_mail_options, then_rcpt_options)
            following = self._group(*envelope)
            # Kept so that the next call, for that message, need not write its envelope again to compare it.
            self._ahead_of = ((then_from, then_to, then_mail_options, then_rcpt_options), then_msg, envelope)
        try:
            if len(body) < _ONE_WRITE:
                # One segment: a second small write could wait for an ACK (Nagle).
                self.send(body + end + following)
            else:
                self.send(body)  # a big body is not copied once more just to add its end
                self.send(end + following)
        except OSError as exc:
            raise _staged(exc, "data")  # not all of it was written: the server cannot have taken it
        self._ahead = following or None
        try:
            self.last_reply = self.getreply()
        except smtplib.SMTPServerDisconnected as exc:
            self.close()
            raise AckLost(f"the connection was lost after the message was sent ({exc})") from exc
        code, resp = self.last_reply
        if code != 250:
            if self._ahead is None:
                self._after_failure(code)
            elif code == 421:
                self.close()
            # Otherwise the answer to the dot ended the transaction, and the next one's commands are
            # already on their way: an RSET now would reach the server as that message's content.
            raise MessageRefused(code, resp)
        return refused

    def _pipelined(self, mail, rcpts, encoding, written=False):
        if not written:
            self.send(self._group(mail, rcpts, encoding))
        mail_reply = self.getreply()
        rcpt_replies = [self.getreply() for _ in rcpts]
        data_reply = self.getreply()
        if data_reply[0] == 354 and (mail_reply[0] != 250 or all(r[0] not in (250, 251) for r in rcpt_replies)):
            # A lenient server opened DATA although nothing can be delivered: close it empty.
            self.send(b"." + _CRLF)
            self.getreply()
            data_reply = (554, b"nothing to deliver")
        return mail_reply, rcpt_replies, data_reply

    def _one_by_one(self, mail, rcpts, encoding):
        not_sent = (503, b"not sent")
        mail_reply = self._command(mail, encoding)
        if mail_reply[0] != 250:
            return mail_reply, [], not_sent
        rcpt_replies = []
        for rcpt in rcpts:
            rcpt_replies.append(self._command(rcpt, encoding))
            if rcpt_replies[-1][0] == 421:
                return mail_reply, rcpt_replies, not_sent
        if all(r[0] not in (250, 251) for r in rcpt_replies):
            return mail_reply, rcpt_replies, not_sent
        return mail_reply, rcpt_replies, self._command("DATA", encoding)

    def _command(self, line, encoding):
        self.send((line + "\r\n").encode(encoding))
        return self.getreply()

    def _after_failure(self, code):
        """End a failed transaction: RSET, or close when the server is closing or RSET fails too."""
        if code == 421 or self.sock is None:
            self.close()
            return
        try:
            ok = self.rset()[0] == 250
        except (smtplib.SMTPServerDisconnected, OSError):
            ok = False
        if not ok:
            self.close()  # the original failure is what the caller needs to see


class _SMTP(_BulkSMTP, smtplib.SMTP):
    pass


class _SMTP_SSL(_BulkSMTP, smtplib.SMTP_SSL):
    pass


class SMTPBackend(EmailBackend):
    @property
    def connection_class(self):
        return _SMTP_SSL if self.use_ssl else _SMTP

    def open(self):
        """Open and greet (EHLO), so the server's extensions are known before a message is built."""
        try:
            opened = super().open()
            if opened:
                try:
                    self.connection.ehlo_or_helo_if_needed()
                except OSError as exc:
                    raise _staged(exc, "ehlo")
        except OSError as exc:
            _staged(exc, "ehlo" if isinstance(exc, smtplib.SMTPHeloError) else "connect")
            self.abort()
            raise
        return opened

    def abort(self):
        """Forget the connection without a QUIT (it is broken, or the server stalls)."""
        for conn in (self._partial_connection, self.connection):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._partial_connection = self.connection = None

    def offers(self, extension):
        """Whether the open connection's server announced `extension` (e.g. "smtputf8") to EHLO."""
        return self.connection is not None and bool(self.connection.has_extn(extension))

    def _options(self, smtputf8):
        if not smtputf8:
            return []
        return ["SMTPUTF8", "BODY=8BITMIME"] if self.offers("8bitmime") else ["SMTPUTF8"]

    def send_prepared(self, from_addr, recipients, message_bytes, smtputf8=False, then=None):
        """Send bytes that are already a complete message (the bulk path); raises like sendmail.

        `smtputf8`: the envelope or the headers have UTF-8 addresses (RFC 6531); the caller
        checked that the server offers it. `then`: the next message's (from_addr, recipients,
        message_bytes, smtputf8), whose envelope may go out with this message's end
        (_BulkSMTP.sendmail); the next call must send that message.
        """
        self.open()
        if then is not None:
            then_from, then_to, then_bytes, then_utf8 = then
            then = (then_from, then_to, then_bytes, self._options(then_utf8), ())
        self.connection.sendmail(from_addr, recipients, message_bytes, self._options(smtputf8), then=then)
        return 1

    def close(self):
        # A message's DATA may be open (its envelope went out ahead): a QUIT would become its content.
        if self.connection is not None and self.connection._ahead is not None:
            self.abort()
            return
        super().close()

    @property
    def last_reply(self):
        """(code, text) of the last accepted message on this connection, or None."""
        reply = getattr(self.connection, "last_reply", None)
        if reply is None:
            return None
        code, text = reply
        return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
