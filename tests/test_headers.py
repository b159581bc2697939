"""Headers exact: Date with +0000, Message-IDs in the From domain (or DBMAIL_MESSAGE_ID_DOMAIN), Feedback-ID."""

import datetime
import email
import re
from email.utils import parsedate_to_datetime

import pytest

from dbmail.content import headers, rendering
from dbmail.content.recipients import Recipient
from dbmail.intake import expand, outbox, spool
from dbmail.models import SendGrant, TextOfEmail
from dbmail.send import mime
from dbmail.send.message import as_bytes, to_email_message
from mailgate.gate import receive as gate
from mailgate.mailboxes import outgoing
from mailgate.models import Message

from .factories import (
    EmailListFactory,
    MailAccountFactory,
    MessageRequestFactory,
    SenderAccountFactory,
    TextOfEmailFactory,
    UserFactory,
    mail_fixture,
)
from .spoolfiles import item, xml

pytestmark = pytest.mark.django_db
NOV = datetime.datetime(2026, 11, 30, 8, 5, 9, tzinfo=datetime.UTC)


def header(data, name):
    return email.message_from_bytes(data)[name]


def id_domain(message_id):
    return message_id.strip("<>").rpartition("@")[2]


# --- Date ---


def test_date_is_utc_with_plus_0000_not_the_unknown_zone(settings):
    settings.EMAIL_USE_LOCALTIME = False
    assert headers.date(NOV) == "Mon, 30 Nov 2026 08:05:09 +0000"


def test_local_time_keeps_the_instant_and_names_its_offset(settings):
    settings.EMAIL_USE_LOCALTIME = True
    value = headers.date(NOV)
    assert parsedate_to_datetime(value) == NOV and not value.endswith("-0000")


def test_every_writer_dates_mail_with_plus_0000(settings):
    settings.EMAIL_USE_LOCALTIME = False
    row = TextOfEmailFactory()
    raw = TextOfEmailFactory(raw_message=b"From: a@example.org\r\n\r\nx")
    assert header(mime.compose(row, sign=False), "Date").endswith(" +0000")
    assert header(as_bytes(row, sign=False), "Date").endswith(" +0000")
    built = to_email_message(row, sign=False).message().as_bytes(linesep="\r\n")
    assert header(built, "Date").endswith(" +0000")
    assert header(as_bytes(raw, sign=False), "Date") is None  # a forward keeps what it has

    account = MailAccountFactory(address="box@example.org")
    message = Message.objects.create(
        direction=Message.Direction.OUTGOING, account=account, subject="s", text="t", to=["a@example.net"]
    )
    outgoing.sync_sender(account)
    assert header(outgoing.compose(message, "", "<m@example.org>"), "Date").endswith(" +0000")


# --- Message-ID ---


def test_message_ids_are_in_the_from_domain_of_each_kind_of_mail(settings, tmp_path):
    settings.DEFAULT_FROM_EMAIL = "site <noreply@site.example>"
    settings.DBMAIL_MESSAGE_ID_DOMAIN = ""
    UserFactory(email="ann@example.net")
    request = MessageRequestFactory(sender=SenderAccountFactory(address="news@news.example"))
    expand.expand_due()
    assert id_domain(request.emails.get().message_id) == "news.example"

    SenderAccountFactory(address="office@office.example")
    adhoc = outbox.enqueue("bob@example.net", "s", "t", from_email="office@office.example")
    assert id_domain(adhoc.message_id) == "office.example"
    assert id_domain(outbox.enqueue("cy@example.net", "s", "t").message_id) == "site.example"

    record = spool.SpoolFile.objects.create(name="a.xml", sha256="0" * 64, location="a.xml")
    SenderAccountFactory(address="foo@library.example")
    spool.create_emails(record, spool.parse(xml(item(sender="foo@library.example"))), NOV)
    assert id_domain(record.items.get().email.message_id) == "library.example"

    EmailListFactory(name="Physics", regex="physics", users=[UserFactory(email="dee@example.net")])
    gate.run(mail_fixture("plain.eml"), "physics@lists.example.org", "ann@example.com")
    forward = TextOfEmail.objects.get(to_address="dee@example.net")
    assert id_domain(forward.message_id) == "lists.example.org"

    owner = UserFactory(username="owner")
    SendGrant.objects.create(address="@mailbox.example", user=owner)  # the site's server: a grant lets it send
    account = MailAccountFactory(address="box@mailbox.example", owner=owner)
    message = Message.objects.create(
        direction=Message.Direction.OUTGOING,
        status=Message.Status.SENDING,
        account=account,
        subject="s",
        text="t",
        to=["eve@example.net"],
    )
    outgoing.submit(message)
    assert {id_domain(e.message_id) for e in message.outbox.all()} == {"mailbox.example"}


def test_dbmail_message_id_domain_overrides_the_from_domain(settings):
    settings.DBMAIL_MESSAGE_ID_DOMAIN = "mail.example.org"
    SenderAccountFactory(address="office@office.example")
    assert id_domain(outbox.enqueue("bob@example.net", "s", "t", from_email="office@office.example").message_id) == (
        "mail.example.org"
    )


def test_an_international_from_domain_gives_an_ascii_message_id(settings):
    settings.DBMAIL_MESSAGE_ID_DOMAIN = ""
    assert headers.message_id_domain("Büro <office@bücher.example>") == "xn--bcher-kva.example"


# A valid domain of 250 characters (labels of at most 63): a Message-ID in it would not fit the 255 of
# TextOfEmail.message_id, and the insert of a forward or a notice failed.
LONG_DOMAIN = ".".join(["a" * 61, "b" * 61, "c" * 61, "d" * 60]) + ".org"
MSG_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+>")


def fits(message_id):
    """A valid msg-id (dot-atom on both sides) that fits our column, in the long domain's own registered part."""
    assert len(message_id) <= TextOfEmail._meta.get_field("message_id").max_length, message_id
    assert MSG_ID.fullmatch(message_id), message_id
    rest = id_domain(message_id).partition(".")[2]  # after the label that stands for the whole domain
    assert LONG_DOMAIN.endswith("." + rest) and rest.endswith("d" * 60 + ".org"), message_id
    return True


def test_a_250_character_domain_still_gives_a_message_id_that_fits(settings):
    assert len(LONG_DOMAIN) == 250
    settings.DBMAIL_MESSAGE_ID_DOMAIN = ""
    long_address = f"o@{LONG_DOMAIN}"  # 252 characters: an address has at most 254
    assert fits(rendering.new_message_id(long_address))
    assert fits(rendering.MessageIds(long_address).new())
    # Stable per domain, and different domains do not share one.
    assert headers.message_id_domain(long_address) == headers.message_id_domain(long_address)
    other = f"o@{'e' * 61}.{LONG_DOMAIN[62:]}"
    assert headers.message_id_domain(other) != headers.message_id_domain(long_address)
    assert headers.message_id_domain("office@example.org") == "example.org"  # short ones as they are

    SenderAccountFactory(address=long_address)
    assert fits(outbox.enqueue("bob@example.net", "s", "t", from_email=long_address).message_id)
    settings.DBMAIL_MESSAGE_ID_DOMAIN = LONG_DOMAIN
    assert fits(outbox.enqueue("cy@example.net", "s", "t").message_id)


def test_a_list_at_a_250_character_domain_forwards_and_sends_notices(settings):
    settings.DBMAIL_MESSAGE_ID_DOMAIN = ""
    settings.MAILGATE_SEND_NOW_MAX = 0
    EmailListFactory(name="Long", regex="l", users=[UserFactory(email="dee@example.net")])
    result = gate.run(mail_fixture("plain.eml"), f"l@{LONG_DOMAIN}", "ann@example.com")
    assert result.code == 0, result.message
    forward = TextOfEmail.objects.get(to_address="dee@example.net")
    assert fits(forward.message_id)
    assert header(bytes(forward.raw_message), "Message-ID") == forward.message_id

    settings.DEFAULT_FROM_EMAIL = f"n@{LONG_DOMAIN}"  # a notice's sender
    settings.MAILGATE_UNKNOWN_RECIPIENT = "notice"
    result = gate.run(mail_fixture("plain.eml"), f"x@{LONG_DOMAIN}", "ann@example.com")
    assert result.code == 0, result.message
    assert fits(TextOfEmail.objects.get(to_address="ann@example.com").message_id)


# --- Feedback-ID ---


def test_request_mail_carries_a_feedback_id_per_request(settings):
    settings.DBMAIL_SITE_NAME = "Physics Dept: news"
    UserFactory(email="ann@example.net")
    request = MessageRequestFactory()
    expand.expand_due()
    row = request.emails.get()
    expected = f"{request.pk}:{request.sender_id}:mailsite:Physics-Dept-news"
    assert row.headers["Feedback-ID"] == expected
    assert header(mime.compose(row, sign=False), "Feedback-ID") == expected
    preview = expand.build_email(request, _compiled(request), Recipient(email="x@example.net", name=""), NOV)
    assert preview.headers["Feedback-ID"] == expected


def test_ad_hoc_mail_has_no_feedback_id():
    SenderAccountFactory()
    assert "Feedback-ID" not in outbox.enqueue("bob@example.net", "s", "t", from_email="office@example.org").headers


def _compiled(request):
    from dbmail.content import rendering

    return rendering.CompiledRequest(request)
