"""Storing a message read from a folder: raw bytes, parsed fields, files in Django's storage."""

import pytest

from dbmail.models import TextOfEmail
from mailgate.mailboxes import store as mailbox
from mailgate.models import EmailList, InboundMessage, Message, MessagePart

from .factories import EmailListFactory, MailFolderFactory, UserFactory
from .mailboxes import PDF, PNG, plain, rich

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")


def test_parts_go_to_storage_byte_for_byte():
    folder = MailFolderFactory()
    raw = rich()
    message, created = mailbox.store_incoming(folder, 7, 1, raw)

    assert created and message.status == Message.Status.RECEIVED
    assert message.raw == raw
    assert message.text == "The text part.\n"
    assert message.html.read().decode() == '<p>The <b>HTML</b> part <img src="cid:logo@example.org"></p>\n'
    assert (message.to, message.cc) == (["box@example.org", "bob@example.org"], ["cy@example.org"])
    assert message.from_header == "Ann Smith <ann@example.org>"
    assert message.headers["subject"] == ["Rich mail"]

    inline = message.parts.get(kind=MessagePart.Kind.INLINE)
    assert (inline.filename, inline.content_type, inline.content_id) == ("logo.png", "image/png", "logo@example.org")
    assert inline.file.read() == PNG and inline.size == len(PNG)
    attachments = list(message.parts.filter(kind=MessagePart.Kind.ATTACHMENT).order_by("position"))
    assert [(a.position, a.filename, a.content_type) for a in attachments] == [
        (0, "report.pdf", "application/pdf"),
        (1, "", "message/rfc822"),
    ]
    assert attachments[0].file.read() == PDF
    assert b"Subject: Inner" in attachments[1].file.read()


def test_same_uid_twice_is_stored_once():
    folder = MailFolderFactory()
    raw = plain()
    first, created = mailbox.store_incoming(folder, 7, 1, raw)
    again, created_again = mailbox.store_incoming(folder, 7, 1, raw)
    assert (created, created_again, first.pk) == (True, False, again.pk)
    assert InboundMessage.objects.count() == 1
    folder.refresh_from_db()
    assert folder.last_uid == 1


def test_identical_bytes_under_the_same_uidvalidity_are_two_messages():
    folder = MailFolderFactory()
    raw = plain()
    mailbox.store_incoming(folder, 7, 1, raw)
    _, created = mailbox.store_incoming(folder, 7, 2, raw)  # the user copied the message: two on the server
    assert created and Message.objects.count() == 2


def test_undecodable_charset_is_read_leniently():
    folder = MailFolderFactory()
    raw = b"From: a@example.org\r\nSubject: odd\r\nContent-Type: text/plain; charset=x-no-such\r\n\r\nCaf\xe9\r\n"
    message, _ = mailbox.store_incoming(folder, 1, 1, raw)
    assert message.status == Message.Status.RECEIVED
    assert message.text.startswith("Caf")


def test_delivered_to_is_the_envelope_recipient_and_lists_route_it(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    ann = UserFactory(email="ann@example.com")
    physics = EmailListFactory(regex="physics", users=[ann], posting_policy=EmailList.Policy.ANYONE)
    folder = MailFolderFactory(route_to_lists=True)
    raw = plain(Delivered_To="physics@lists.example.org", Return_Path="<cy@example.net>")

    message, _ = mailbox.store_incoming(folder, 1, 1, raw)

    inbound = message.inbound
    assert (inbound.envelope_recipient, inbound.envelope_sender) == ("physics@lists.example.org", "cy@example.net")
    assert (inbound.status, inbound.email_list) == (InboundMessage.Status.FORWARDED, physics)
    assert TextOfEmail.objects.filter(to_address="ann@example.com").count() == 1
    assert message.status == Message.Status.RECEIVED


def test_without_routing_the_inbound_row_is_only_a_record():
    folder = MailFolderFactory(route_to_lists=False)
    message, _ = mailbox.store_incoming(folder, 1, 1, plain(Delivered_To="physics@lists.example.org"))
    assert message.inbound.status == InboundMessage.Status.RECEIVED
    assert message.inbound.email_list is None
    assert TextOfEmail.objects.count() == 0
