"""Shared pieces of the mailbox tests: messages to put on the IMAP server, and accounts pointed at it."""

from email.message import EmailMessage
from email.utils import make_msgid

from .factories import MailAccountFactory, MailServerProfileFactory

PNG = bytes(range(256)) * 3 + b"\x89PNG\r\n\x1a\n\x00end"
PDF = b"%PDF-1.4\n" + bytes(reversed(range(256))) * 5 + b"\r\n%%EOF\n"


def plain(subject="Hello", body="Just text.\n", size=0, **headers):
    message = EmailMessage()
    message["From"] = headers.pop("sender", "Ann Smith <ann@example.org>")
    message["To"] = headers.pop("to", "box@example.org")
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="example.org")
    message["Date"] = headers.pop("Date", "Mon, 02 Nov 2026 10:00:00 +0000")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body + ("x" * 76 + "\n") * (size // 77))
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def rich():
    """Text and HTML alternatives, an inline image the HTML shows by cid:, a PDF and an attached message."""
    message = EmailMessage()
    message["From"] = "Ann Smith <ann@example.org>"
    message["To"] = "box@example.org, Bob <bob@example.org>"
    message["Cc"] = "cy@example.org"
    message["Subject"] = "Rich mail"
    message["Message-ID"] = make_msgid(domain="example.org")
    message.set_content("The text part.\n")
    message.add_alternative('<p>The <b>HTML</b> part <img src="cid:logo@example.org"></p>\n', subtype="html")
    message.get_payload()[1].add_related(PNG, "image", "png", cid="<logo@example.org>", filename="logo.png")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    inner = EmailMessage()
    inner["Subject"], inner["From"] = "Inner", "cy@example.org"
    inner.set_content("Forwarded text.\n")
    message.add_attachment(inner)
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def account_on(dovecot, user, **kwargs):
    login, password = user
    profile = kwargs.pop("profile", None) or MailServerProfileFactory(imap_host=dovecot.host, imap_port=dovecot.port)
    return MailAccountFactory(profile=profile, login=login, secret=password, address=f"{login}@example.org", **kwargs)
