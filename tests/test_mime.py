"""The lean composer must say what Django's EmailMessage says, for any content."""

import binascii
from email import message_from_bytes, message_from_string, policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbmail.content import addresses
from dbmail.models import TextOfEmail
from dbmail.send import mime
from dbmail.send.message import to_email_message
from dbmail.track.header import TRACKING_HEADER

from .conftest import fuzz_settings

# Printable text in many scripts, without control characters (headers never carry them).
words = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=120)
bodies = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
    max_size=3000,
)


def email_with(**fields):
    base = dict(
        to_address="ann@example.net",
        to_name="",
        from_header="The Office <office@example.org>",
        envelope_sender="office@example.org",
        reply_to="",
        subject="Hello",
        text="Hi\n",
        html="",
        headers={},
        message_id="<1.2.3@example.org>",
    )
    base.update(fields)
    return TextOfEmail(**base)


def parsed(data):
    return message_from_bytes(data, policy=policy.default)


def same_reading(email):
    # Unsigned: what is compared here is the MIME (tests/test_dkim.py signs).
    ours = parsed(mime.compose(email, sign=False))
    django = parsed(to_email_message(email, sign=False).message().as_bytes(linesep="\r\n"))
    for name in ["From", "To", "Subject", "Reply-To", "Message-ID", TRACKING_HEADER, *email.headers]:
        assert " ".join(str(ours.get(name, "")).split()) == " ".join(str(django.get(name, "")).split()), name
    text_ours, text_django = ours.get_body(("plain",)), django.get_body(("plain",))
    assert (text_ours and text_ours.get_content()) == (text_django and text_django.get_content())
    if email.html:
        assert ours.get_body(("html",)).get_content() == django.get_body(("html",)).get_content()
    else:
        assert ours.get_body(("html",)) is None
    assert ours.defects == [] and all(not part.defects for part in ours.walk())
    return ours


@fuzz_settings(150)
@given(subject=words, name=words, text=bodies, html=bodies, extra=words)
def test_reads_the_same_as_djangos_message(subject, name, text, html, extra):
    email = email_with(
        subject=" ".join(subject.split()),
        to_name=" ".join(name.split()),
        text=text,
        html=html,
        headers={"X-Note": " ".join(extra.split()) or "-"},
    )
    same_reading(email)


def test_long_ascii_headers_are_folded_and_lines_stay_short():
    url = "https://mail.example.org/unsubscribe/" + "x" * 90 + "/"
    email = email_with(headers={"List-Unsubscribe": f"<{url}>, <mailto:unsubscribe@example.org?subject=u>"})
    data = mime.compose(email, sign=False)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert same_reading(email)["List-Unsubscribe"].startswith(f"<{url}>")


def test_non_ascii_body_is_quoted_printable_and_long_lines_survive():
    email = email_with(text="Zażółć gęślą jaźń\n" + "y" * 2000 + "\n.dot line\n", html="<p>Grüße</p>")
    data = mime.compose(email, sign=False)
    assert b"quoted-printable" in data and all(len(line) <= 998 for line in data.split(b"\r\n"))
    same_reading(email)


def test_a_header_with_a_line_break_is_refused_like_django_does():
    with pytest.raises(ValueError, match="newlines"):
        mime.compose(email_with(headers={"X-Bad": "a\r\nBcc: victim@example.com"}), sign=False)


def test_what_it_does_not_handle_goes_to_django():
    assert mime.compose(email_with(raw_message=b"From: a@b\r\n\r\nx"), sign=False) is None


def test_an_idn_domain_goes_out_in_a_labels_with_the_name_encoded():
    data = mime.compose(email_with(to_address="ann@bücher.example", to_name="Ann Müller"), sign=False)
    assert data.isascii() and b"\r\nTo: =?utf-8?" in data and b"?= <ann@xn--bcher-kva.example>\r\n" in data
    (to,) = parsed(data)["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Ann Müller", "ann@xn--bcher-kva.example")
    same = mime.compose(email_with(to_address="ann@bücher.example", to_name="Ann"), sign=False)
    assert b"\r\nTo: Ann <ann@xn--bcher-kva.example>\r\n" in same
    sender = mime.compose(email_with(from_header="Büro <office@bücher.example>"), sign=False)
    (frm,) = parsed(sender)["From"].addresses
    assert (frm.display_name, frm.addr_spec) == ("Büro", "office@xn--bcher-kva.example") and sender.isascii()


def test_a_utf8_local_part_needs_smtputf8_and_then_stays_utf8():
    with pytest.raises(addresses.NeedsSMTPUTF8, match="does not offer SMTPUTF8"):
        mime.compose(email_with(to_address="jörg@exämple.org"), sign=False)
    data = mime.compose(email_with(to_address="jörg@exämple.org", to_name="Jörg"), smtputf8=True, sign=False)
    assert "?= <jörg@xn--exmple-cua.org>\r\n".encode() in data  # raw UTF-8 in the header (RFC 6532)
    # The email package reads header bytes as ASCII; an SMTPUTF8 reader reads them as UTF-8.
    (to,) = message_from_string(data.decode("utf-8"), policy=policy.default)["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Jörg", "jörg@xn--exmple-cua.org")


def test_an_empty_address_is_no_message():
    with pytest.raises(addresses.AddressError, match="no recipient address"):
        mime.compose(email_with(to_address=""), sign=False)


# Printable ASCII with long lines: the quoted-printable written without binascii (mime._qp_printable).
long_ascii = st.lists(
    st.text(st.sampled_from("ab =\t.-"), min_size=0, max_size=1200)
    # A long paragraph with no "=" (cut in one pass), or with one late, or only its last space escaped.
    | st.builds(lambda n, tail: "word " * n + tail, st.integers(0, 300), st.sampled_from(["", " ", "\t", "=", "x="]))
    | st.builds(lambda n, m: "a" * n + "=" + "b" * m, st.integers(0, 400), st.integers(0, 900))
    | st.sampled_from(["=" * 999, " " * 1000, "", "x" * 1116 + " ", "x" * 999]),
    min_size=1,
    max_size=5,
).map("\n".join)


@fuzz_settings(300)
@given(long_ascii)
def test_long_ascii_lines_are_quoted_printable_that_reads_back_as_the_text(text):
    import quopri

    encoding, body = mime._part_body(text)
    if max(map(len, text.split("\n"))) <= 998:
        assert (encoding, body) == ("7bit", text.replace("\n", "\r\n"))
        return
    assert encoding == "quoted-printable"
    lines = body.split("\r\n")
    assert all(len(line) <= 76 and not line.endswith((" ", "\t")) for line in lines)
    assert quopri.decodestring(body.encode("ascii")).decode("ascii").replace("\r\n", "\n") == text
    same_reading(email_with(text=text))


def test_only_control_characters_but_tab_and_line_feed_make_ascii_text_unprintable():
    controls = {chr(c) for c in [*range(9), *range(11, 32), 127]}
    for c in map(chr, range(128)):
        assert mime._printable(f"a{c}b") == (c not in controls), repr(c)


def test_control_characters_and_non_ascii_still_go_through_binascii():
    for text in ("a\x01" + "b" * 1000, "é" + "c" * 1000):
        encoding, body = mime._part_body(text)
        assert encoding == "quoted-printable"
        assert body == binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii").replace("\n", "\r\n")


def test_encoded_lines_are_remembered_up_to_a_bound_and_come_back_the_same():
    paragraph = "The same paragraph in every letter = news. " * 30
    first = mime._part_body(f"Dear Ann,\n{paragraph}\n")
    assert mime._QP_CACHE[paragraph] == mime._qp_line(paragraph)
    for i in range(mime._QP_CACHE_SIZE * 2):  # links that differ in every message
        mime._part_body(f"{paragraph}\nhttps://example.org/unsubscribe/{i:0100d}\n" + "x" * 999)
        assert len(mime._QP_CACHE) <= mime._QP_CACHE_SIZE
    assert mime._part_body(f"Dear Ann,\n{paragraph}\n") == first
    assert mime._QP_CACHE[paragraph] == mime._qp_line(paragraph)
    huge = "a long line without an end " * 1000  # longer than a paragraph: encoded, not kept
    mime._part_body(huge)
    assert huge not in mime._QP_CACHE
