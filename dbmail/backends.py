"""Django's SMTP backend, keeping the server's final reply to each message.

The reply to DATA ("250 2.0.0 Ok: queued as 4Bx7..") names the MTA's queue
id, which is how a Postfix or Exim log line is matched back to our email.
Everything else is Django's own backend, so EMAIL_* settings mean what
Django's documentation says.
"""

import smtplib

from django.core.mail.backends.smtp import EmailBackend


class _KeepsDataReply:
    last_reply = None

    def data(self, msg):
        self.last_reply = super().data(msg)
        return self.last_reply


class _SMTP(_KeepsDataReply, smtplib.SMTP):
    pass


class _SMTP_SSL(_KeepsDataReply, smtplib.SMTP_SSL):
    pass


class SMTPBackend(EmailBackend):
    @property
    def connection_class(self):
        return _SMTP_SSL if self.use_ssl else _SMTP

    @property
    def last_reply(self):
        """(code, text) of the last accepted message on this connection, or None."""
        reply = getattr(self.connection, "last_reply", None)
        if reply is None:
            return None
        code, text = reply
        return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
