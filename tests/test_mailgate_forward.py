import email
from email import policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbmail.models import SenderAccount, TextOfEmail
from dbmail.send.loop import send_due
from mailgate.gate import forward, long_lines, parsing, routing
from mailgate.gate import receive as gate
from mailgate.models import EmailList

from .conftest import fuzz_settings
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


# --- Lines over 998 octets inside parts (SMTP servers refuse them: every member's copy was lost) ---

LONG_TEXT = ("word " * 300).strip().encode() + b"!"  # 1500 octets on one line
LONG_HTML = b"<p>" + b"x" * 2500 + b"</p>"
PDF = mail_fixture("attachments.eml").split(b"Content-Transfer-Encoding: base64\n\n", 1)[1].split(b"\n\n", 1)[0]
HEAD = b"From: Ann Smith <ann@example.com>\nTo: physics@lists.example.org\nSubject: Long\nMIME-Version: 1.0\n"


def alternative_with_long_lines():
    return HEAD + (
        b'Message-ID: <long-alt@example.com>\nContent-Type: multipart/alternative; boundary="alt"\n\n'
        b"Preamble.\n"
        b"--alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
        b"First line.\n" + LONG_TEXT + b"\nLast line.\n"
        b"--alt\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        b"<html><body>\n" + LONG_HTML + b"\n</body></html>\n"
        b"--alt--\nEpilogue.\n"
    )


KEPT_TEXT = b"--mix\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nShort: Zaz\xc3\xb3\xc5\x82\xc4\x87.\n"
KEPT_PDF = (
    b'--mix\nContent-Type: application/pdf; name="w.pdf"\nContent-Disposition: attachment; filename="w.pdf"\n'
    b"Content-Transfer-Encoding: base64\n\n" + PDF + b"\n"
)


def mixed_with_an_attachment():
    return HEAD + (
        b'Message-ID: <long-mix@example.com>\nContent-Type: multipart/mixed; boundary="mix"\n\n'
        + KEPT_TEXT
        + b'--mix\nContent-Type: text/csv; name="data.csv"\nContent-Disposition: attachment; filename="data.csv"\n\n'
        + b",".join(b"%d" % i for i in range(600))
        + b"\n1,2,3\n"
        + KEPT_PDF
        + b"--mix--\n"
    )


def nested_message():
    inner = (
        b"From: Bob <bob@example.net>\nSubject: " + b"inner subject " * 100 + b"\nMessage-ID: <inner@example.net>\n"
        b'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="in"\n\n'
        b"--in\nContent-Type: text/plain\n\n" + LONG_TEXT + b"\n"
        b"--in\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n<p>short =3D fine</p>\n"
        b"--in--\n"
    )
    return HEAD + (
        b'Message-ID: <long-nest@example.com>\nContent-Type: multipart/mixed; boundary="out"\n\n'
        b"--out\nContent-Type: text/plain\n\nSee the forwarded message.\n"
        b"--out\nContent-Type: message/rfc822\n\n" + inner + b"\n"
        b"--out\nContent-Type: text/plain; charset=us-ascii\n\n" + LONG_TEXT + b"\n"
        b"--out--\n"
    )


LONG_SHAPES = {
    "alternative": alternative_with_long_lines,
    "mixed-attachment": mixed_with_an_attachment,
    "nested-message": nested_message,
}


def leaves(message):
    """(content type, decoded bytes with line ends as LF) of each leaf part, in order; SMTP makes LF CRLF."""
    found = []
    for part in message.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True) or b""
        found.append((part.get_content_type(), data.replace(b"\r\n", b"\n")))
    return found


def longest_line(data):
    """As an SMTP server counts lines: up to LF, less a CRLF's CR (a lone CR does not end one)."""
    return max(len(line[:-1] if line.endswith(b"\r") else line) for line in data.split(b"\n"))


@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("linesep", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_only_the_parts_with_a_long_line_are_reencoded(physics, shape, linesep):
    raw = LONG_SHAPES[shape]().replace(b"\n", linesep)
    assert longest_line(raw) > 998
    out = forward.build_message(raw, parsing.parse(raw), routing.route(LIST), "<c@x>")
    assert longest_line(out) <= 998
    original, copy = email.message_from_bytes(raw), email.message_from_bytes(out)
    assert leaves(copy) == leaves(original)  # the same content once decoded, in the same structure
    assert [p.get_content_type() for p in copy.walk()] == [p.get_content_type() for p in original.walk()]
    for before, after in zip(original.walk(), copy.walk(), strict=True):
        if before.is_multipart():
            continue
        long_before = longest_line(before.as_bytes().split(b"\n\n", 1)[-1]) > 998
        expected = "base64" if long_before else before["Content-Transfer-Encoding"]
        assert after["Content-Transfer-Encoding"] == expected
        assert after["Content-Type"] == before["Content-Type"]  # nothing else of the part changes
    if shape == "mixed-attachment":  # the other parts keep their very bytes
        assert KEPT_TEXT.replace(b"\n", linesep) in out and KEPT_PDF.replace(b"\n", linesep) in out
    if shape == "alternative":
        assert linesep + b"Preamble." + linesep in out and b"--alt--" + linesep + b"Epilogue." in out
    if shape == "nested-message":  # the attached message's own long Subject is folded, its value kept
        inner = copy.get_payload()[1].get_payload()[0]
        assert " ".join(inner["Subject"].split()) == ("inner subject " * 100).strip()


def test_an_unclosed_multipart_is_reencoded_too(physics):
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\n' + LONG_TEXT + b"\n"
    out = forward.build_message(raw, parsing.parse(raw), routing.route(LIST), "<c@x>")
    assert leaves(email.message_from_bytes(out)) == leaves(email.message_from_bytes(raw))
    assert longest_line(out) <= 998


def test_a_split_that_disagrees_with_the_parse_changes_nothing():
    # The bytes are split by the boundaries the parse found, part for part; where the two disagree
    # (here: the parse of another message, with one part more) nothing is re-encoded.
    raw = alternative_with_long_lines()
    other = raw.replace(b"--alt--", b"--alt\nContent-Type: text/plain\n\nthird\n--alt--")
    body = raw[parsing.header_section(raw)[2] :]
    assert long_lines.reencode_parts(body, parsing.parse(other).message, b"\n") == body
    assert long_lines.reencode_parts(body, parsing.parse(raw).message, b"\n") != body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("shape", LONG_SHAPES)
def test_long_lines_in_parts_arrive_over_smtp(physics, smtp_server, shape):
    """Before: the part's line went out as it came; the SMTP server refused it and both copies were lost."""
    raw = LONG_SHAPES[shape]()
    assert gate.run(raw, LIST, "ann@example.com").code == 0
    assert sorted(TextOfEmail.objects.values_list("status", flat=True)) == ["sent", "sent"]
    assert len(smtp_server.received) == 2
    wanted = leaves(email.message_from_bytes(raw))
    for received in smtp_server.received:
        assert longest_line(received.data) <= 998
        assert leaves(email.message_from_bytes(received.data)) == wanted


@st.composite
def mime_tree(draw, depth=0):
    """A well-formed MIME entity (header section and body): leaves with short and long lines, nested parts."""
    kind = draw(st.sampled_from(["leaf", "leaf", "multipart", "message"] if depth < 3 else ["leaf"]))
    if kind == "leaf":
        encoding = draw(
            st.sampled_from(
                [b"", b"7bit", b"8bit", b"quoted-printable", b"base64"]  # the last two written with long lines too
            )
        )
        texts = [b"short", b"x" * 1200, b"\xc3\xa9" * 700, b"", b"--not-a-boundary", b"a" * 600 + b"\r" + b"b" * 600]
        if encoding == b"quoted-printable":
            texts += [b"caf=C3=A9 " * 150, b"y" * 900 + b"=\n" + b"z" * 900]
        if encoding == b"base64":
            texts = [b"QUJD" * 400, b"QUJD", b""]
        lines = draw(st.lists(st.sampled_from(texts), max_size=4))
        encoding = b"Content-Transfer-Encoding: " + encoding + b"\n" if encoding else b""
        header = draw(
            st.sampled_from([b"Content-Type: text/plain\n", b"Content-Type: application/octet-stream\n", b""])
        )
        return header + encoding + b"\n" + b"\n".join(lines)
    if kind == "message":
        return b"Content-Type: message/rfc822\n\nSubject: inner\n" + draw(mime_tree(depth + 1))
    boundary = b"b%d-%d" % (depth, draw(st.integers(0, 99)))
    parts = draw(st.lists(mime_tree(depth + 1), min_size=1, max_size=3))
    body = b"".join(b"--" + boundary + b"\n" + part + b"\n" for part in parts) + b"--" + boundary + b"--\n"
    preamble = draw(st.sampled_from([b"", b"Preamble.\n", b"p" * 1500 + b"\n"]))
    return b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\n\n' + preamble + body


@fuzz_settings(80)
@given(tree=mime_tree(), crlf=st.booleans())
def test_any_well_formed_tree_keeps_its_content_and_loses_its_long_lines(physics, tree, crlf):
    raw = HEAD + b"Message-ID: <t@example.com>\n" + tree
    raw = raw.replace(b"\n", b"\r\n") if crlf else raw
    out = forward.build_message(raw, parsing.parse(raw), routing.route(LIST), "<c@x>")
    assert leaves(email.message_from_bytes(out)) == leaves(email.message_from_bytes(raw))
    assert longest_line(out) <= 998
