import email
from email import policy

import pytest

from dbmail.models import SenderAccount, TextOfEmail
from dbmail.send.loop import send_due
from mailgate.gate import forward, parsing, routing
from mailgate.gate import receive as gate
from mailgate.models import EmailList

from .factories import EmailListFactory, UserFactory, mail_fixture

LIST = "physics@lists.example.org"


def parse_bytes(data):
    return email.message_from_bytes(data, policy=policy.default)


@pytest.fixture
def physics(db):
    ann = UserFactory(username="ann", email="ann@example.com", first_name="Ann", last_name="Smith")
    bob = UserFactory(username="bob", email="bob@example.net", first_name="Bob", last_name="Jones")
    return EmailListFactory(name="Physics", regex="physics", users=[ann, bob], subject_prefix="[Physics]")


def build(name, message_id="<copy-1@example.org>"):
    raw = mail_fixture(name)
    return raw, forward.build_message(raw, parsing.parse(raw), routing.route(LIST), message_id)


def body_of(data):
    return forward.split_raw(data)[2]


def test_headers_are_rewritten_dmarc_safe(physics):
    raw, out = build("plain.eml")
    message = parse_bytes(out)
    assert message["From"] == "Ann Smith via Physics <physics@lists.example.org>"
    assert message["Reply-To"] == "Ann Smith <ann@example.com>"
    assert message["Subject"] == "[Physics] Lab on Thursday"
    assert message["Message-ID"] == "<copy-1@example.org>"
    assert message["References"] == "<plain-1@example.com>"
    assert message["List-Id"] == "Physics <physics.lists.example.org>"
    assert message["List-Post"] == "<mailto:physics@lists.example.org>"
    assert message["X-Loop"] == LIST and message["Precedence"] == "list"
    assert message["Return-Path"] is None
    assert message["Received"].startswith("from mx.example.com")  # the trace stays
    assert body_of(out) == body_of(raw)


def test_existing_reply_to_and_references_are_kept(physics):
    raw = mail_fixture("plain.eml").replace(
        b"Subject:", b"Reply-To: Lab <lab@example.com>\nReferences: <earlier@example.com>\nSubject:"
    )
    message = parse_bytes(forward.build_message(raw, parsing.parse(raw), routing.route(LIST), "<c@x>"))
    assert message["Reply-To"] == "Lab <lab@example.com>"
    assert message["References"] == "<earlier@example.com> <plain-1@example.com>"
    assert len(message.get_all("Reply-To")) == 1


def test_prefix_is_not_doubled_and_from_can_stay(physics):
    physics.rewrite_from = False
    physics.save()
    raw = mail_fixture("plain.eml").replace(b"Subject: Lab", b"Subject: Re: [physics] Lab")
    message = parse_bytes(forward.build_message(raw, parsing.parse(raw), routing.route(LIST), "<c@x>"))
    assert message["Subject"] == "Re: [physics] Lab on Thursday"
    assert message["From"] == "Ann Smith <ann@example.com>"
    assert message["Reply-To"] is None


def test_encoded_names_are_encoded_again(physics):
    raw, out = build("encoded_headers.eml")
    out.decode("ascii")  # the header section stays ASCII
    message = parse_bytes(out)
    assert str(message["From"]) == "Ángela Gómez via Physics <physics@lists.example.org>"
    assert str(message["Reply-To"]) == "Ángela Gómez <angela@example.com>"
    assert str(message["Subject"]) == "[Physics] Zajęcia w czwartek — sala 12"
    assert body_of(out) == body_of(raw)


@pytest.mark.parametrize(
    "name",
    [
        "alternative.eml",
        "attachments.eml",
        "inline_image.eml",
        "latin1.eml",
        "broken_mime.eml",
        "huge_headers.eml",
        "cc_bcc.eml",
    ],
)
def test_body_bytes_are_untouched_and_bcc_is_gone(physics, name):
    raw, out = build(name)
    assert body_of(out) == body_of(raw)
    assert b"\nBcc:" not in out and b"hidden@example.net" not in out


def test_crlf_messages_stay_crlf(physics):
    raw = mail_fixture("alternative.eml").replace(b"\n", b"\r\n")
    out = forward.build_message(raw, parsing.parse(raw), routing.route(LIST), "<c@x>")
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert body_of(out) == body_of(raw)


@pytest.mark.django_db(transaction=True)
def test_attachments_arrive_byte_intact_over_smtp(physics, smtp_server):
    raw = mail_fixture("attachments.eml")
    assert gate.run(raw, LIST, "ann@example.com").code == 0
    assert len(smtp_server.received) == 2
    original = parse_bytes(raw)
    wanted = [p.get_content() for p in original.iter_attachments()]
    for received in smtp_server.received:
        message = received.message
        got = [p.get_content() for p in message.iter_attachments()]
        assert got == wanted and isinstance(got[0], bytes) and got[0].startswith(b"%PDF-1.4")
        assert [p.get_filename() for p in message.iter_attachments()] == ["worksheet.pdf", "däta.bin"]
        assert message.get_body(("plain",)).get_content().strip() == "The worksheet is attached. Zażółć gęślą jaźń."
        assert received.mail_from == "noreply@example.org"


@pytest.mark.django_db(transaction=True)
def test_inline_images_and_charsets_survive_over_smtp(physics, smtp_server):
    for name in ("inline_image.eml", "latin1.eml"):
        assert gate.run(mail_fixture(name), LIST, "ann@example.com").code == 0
    image = smtp_server.received[0].message
    (png,) = [p for p in image.walk() if p.get_content_type() == "image/png"]
    assert png["Content-ID"] == "<diagram@example.com>" and png.get_content().startswith(b"\x89PNG")
    latin = smtp_server.received[2].message
    assert latin.get_content().rstrip() == "Grüße aus Köln, à bientôt."


@pytest.mark.django_db(transaction=True)
def test_smtp_down_leaves_forwards_for_cron(physics, smtp_server, settings):
    settings.EMAIL_PORT = 1
    assert gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com").code == 0
    assert sorted(TextOfEmail.objects.values_list("status", flat=True)) == ["queued", "queued"]
    settings.EMAIL_PORT = smtp_server.port
    assert send_due().sent == 2
    assert {m.message["X-Loop"] for m in smtp_server.received} == {LIST}


@pytest.mark.django_db(transaction=True)
def test_verp_senders_and_the_list_as_sender_account(physics, smtp_server, settings):
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"
    SenderAccount.objects.create(address=LIST, display_name="Physics")
    assert gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com").code == 0
    for email_row in TextOfEmail.objects.all():
        assert email_row.account.address == LIST
        assert email_row.from_header == "Ann Smith via Physics <physics@lists.example.org>"
        assert email_row.envelope_sender.startswith("bounces+")
    assert {m.mail_from.partition("+")[0] for m in smtp_server.received} == {"bounces"}
    received_ids = {m.message_id for m in smtp_server.received}
    assert received_ids == set(TextOfEmail.objects.values_list("message_id", flat=True))


@pytest.mark.django_db
def test_forward_records_one_outbox_email_per_member(physics, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    physics.archive_address = "archive@example.org"
    physics.posting_policy = EmailList.Policy.ANYONE
    physics.save()
    raw = mail_fixture("plain.eml")
    count = forward.forward(type("I", (), {"raw": raw})(), parsing.parse(raw), routing.route(LIST))
    assert count == 3
    rows = TextOfEmail.objects.order_by("to_address")
    assert [r.to_address for r in rows] == ["ann@example.com", "archive@example.org", "bob@example.net"]
    assert all(parse_bytes(bytes(r.raw_message))["Message-ID"] == r.message_id for r in rows)


@pytest.mark.django_db(transaction=True)
def test_big_lists_are_left_to_cron(physics, smtp_server, settings):
    settings.MAILGATE_SEND_NOW_MAX = 1
    assert gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com").code == 0
    assert smtp_server.received == []
    assert sorted(TextOfEmail.objects.values_list("status", flat=True)) == ["queued", "queued"]
    result = send_due()
    assert (result.sent, result.connections) == (2, 1)


@pytest.mark.parametrize(
    "raw", [b"!:\r\x00", b"!:\n\x00", b"Subject: a\rFrom: x@example.com\r\rbody\r", b"Subject: only"]
)
def test_added_headers_land_in_the_header_section_whatever_the_line_ends(physics, raw):
    out = forward.build_message(raw, parsing.parse(raw), routing.route(LIST), "<c@x>")
    message = parse_bytes(out)
    assert message["X-Loop"] == LIST and message["Message-ID"] == "<c@x>"


@pytest.mark.django_db(transaction=True)
def test_an_error_while_sending_after_the_commit_does_not_fail_the_gate(physics, monkeypatch, settings):
    from dbmail.send import loop as sending

    def broken_backend(*args, **kwargs):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(sending.Sender, "send_claim", broken_backend)
    result = gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com")
    assert result.code == 0 and result.message == "forwarded to 2 member(s)"
    assert TextOfEmail.objects.count() == 2  # committed; the claim's lease makes cron send them later
