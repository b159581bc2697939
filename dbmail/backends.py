"""The path settings name: EMAIL_BACKEND = "dbmail.backends.SMTPBackend" (the code is in dbmail.send.smtp)."""

from dbmail.send.smtp import SMTPBackend

__all__ = ["SMTPBackend"]
