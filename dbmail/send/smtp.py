"""Django's SMTP backend, with two additions for a bulk sender.

- It keeps the server's final reply to each message. "250 2.0.0 Ok: queued
  as 4Bx7.." names the MTA's queue id, which is how a Postfix or Exim log
  line is matched back to our email.
- When the server offers PIPELINING (RFC 2920; Postfix and Exim do), MAIL,
  RCPT and DATA go out in one write and their replies are read together: two
  round trips per message instead of four. Error handling matches smtplib's
  sendmail, so callers see the same exceptions.

Everything else is Django's own backend, so EMAIL_* settings mean what
Django's documentation says.
"""

import re
import smtplib

from django.core.mail.backends.smtp import EmailBackend

_LEADING_DOT = re.compile(rb"(?m)^\.")
_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")


def _quoteaddr(address):
    # smtplib.quoteaddr parses every address with the email package; a plain one needs no parsing.
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


_CRLF = b"\r\n"


class _BulkSMTP:
    last_reply = None

    def data(self, msg):
        self.last_reply = super().data(msg)
        return self.last_reply

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        self.ehlo_or_helo_if_needed()
        if mail_options or rcpt_options or not self.has_extn("pipelining") or not isinstance(msg, bytes):
            return super().sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options)
        to_addrs = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
        size = f" SIZE={len(msg)}" if self.has_extn("size") else ""
        commands = [f"MAIL FROM:{_quoteaddr(from_addr)}{size}"]
        commands += [f"RCPT TO:{_quoteaddr(a)}" for a in to_addrs]
        commands.append("DATA")
        self.send("".join(c + "\r\n" for c in commands).encode(self.command_encoding))

        mail_reply = self.getreply()
        refused = {}
        for address in to_addrs:
            code, resp = self.getreply()
            if code not in (250, 251):
                refused[address] = (code, resp)
        data_code, data_resp = self.getreply()

        if data_code == 354 and (mail_reply[0] != 250 or len(refused) == len(to_addrs)):
            # A lenient server opened DATA although nothing can be delivered: close it empty.
            self.send(b"." + _CRLF)
            self.getreply()
            data_code = 554
        if mail_reply[0] != 250:
            self._after_failure(mail_reply[0])
            raise smtplib.SMTPSenderRefused(mail_reply[0], mail_reply[1], from_addr)
        if any(code == 421 for code, _ in refused.values()) or len(refused) == len(to_addrs):
            self._after_failure(421 if any(c == 421 for c, _ in refused.values()) else 0)
            raise smtplib.SMTPRecipientsRefused(refused)
        if data_code != 354:
            self._after_failure(data_code)
            raise smtplib.SMTPDataError(data_code, data_resp)

        body = _LEADING_DOT.sub(b"..", msg)
        if not body.endswith(_CRLF):
            body += _CRLF
        self.send(body + b"." + _CRLF)
        self.last_reply = self.getreply()
        code, resp = self.last_reply
        if code != 250:
            self._after_failure(code)
            raise smtplib.SMTPDataError(code, resp)
        return refused

    def _after_failure(self, code):
        if code == 421:
            self.close()
            return
        try:
            self.rset()
        except smtplib.SMTPServerDisconnected:
            pass  # the original failure is what the caller needs to see


class _SMTP(_BulkSMTP, smtplib.SMTP):
    pass


class _SMTP_SSL(_BulkSMTP, smtplib.SMTP_SSL):
    pass


class SMTPBackend(EmailBackend):
    @property
    def connection_class(self):
        return _SMTP_SSL if self.use_ssl else _SMTP

    def send_prepared(self, from_addr, recipients, message_bytes):
        """Send bytes that are already a complete message (the bulk path); raises like sendmail."""
        self.open()
        self.connection.sendmail(from_addr, recipients, message_bytes)
        return 1

    @property
    def last_reply(self):
        """(code, text) of the last accepted message on this connection, or None."""
        reply = getattr(self.connection, "last_reply", None)
        if reply is None:
            return None
        code, text = reply
        return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
