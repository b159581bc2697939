"""Attacks on long lines in forwards (mailgate.gate.long_lines): lines at the limit, line ends that split
a line for one reader and not for another, encodings that lie, boundaries inside parts, deep nesting.
Forwards go to a real SMTP server on loopback (aiosmtpd refuses a line over 1000 octets, as SMTP says)."""

import base64
import email

import pytest

from dbmail.models import TextOfEmail
from mailgate.gate import long_lines, parsing
from mailgate.gate import receive as gate

from .conftest import time_limit
from .factories import EmailListFactory

LIST = "physics@lists.example.org"
HEAD = b"From: Ann <ann@example.com>\nTo: physics@lists.example.org\nSubject: Long\nMessage-ID: <long-1@example.com>\n"


class Slow(Exception):
    pass


def smtp_lines(data):
    """The lines as an SMTP server reads them: ended by LF only (a lone CR is inside a line)."""
    return [line.rstrip(b"\r") for line in data.split(b"\n")]


def forward(raw, smtp_server):
    EmailListFactory(name="Physics", regex="physics", addresses="member@example.net")
    assert gate.run(raw, LIST, "ann@example.com").code == 0
    assert TextOfEmail.objects.get().status == "sent", TextOfEmail.objects.get().last_error
    (received,) = smtp_server.received
    assert max(len(line) for line in smtp_lines(received.data)) <= long_lines.MAX_LINE
    return received


@pytest.mark.django_db(transaction=True)
def test_a_line_split_by_a_lone_cr_is_one_long_line_to_smtp(smtp_server):
    body = b"a" * 600 + b"\r" + b"b" * 600 + b"\n"
    received = forward(HEAD + b"\n" + body, smtp_server)
    assert received.message.get_payload(decode=True) == body


@pytest.mark.parametrize(
    "line, long",
    [
        (b"y" * 998 + b"\r\n", False),
        (b"y" * 998 + b"\n", False),
        (b"y" * 998, False),  # the last line, no line end
        (b"y" * 997 + b"\r\r\n", False),  # 998 octets, the last a CR, then CRLF
        (b"y" * 999 + b"\r\n", True),
        (b"y" * 999 + b"\n", True),
        (b"y" * 999, True),
        (b"y" * 500 + b"\r" + b"y" * 498 + b"\n", True),  # a lone CR does not end an SMTP line
        (b"y" * 500 + b"\r\n" + b"y" * 498 + b"\n", False),
    ],
)
def test_a_line_is_long_as_smtp_counts_it(line, long):
    assert long_lines.has_long_line(b"short\r\n" + line) is long
    assert long_lines.has_long_line(line + b"\nshort\n") is long


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("linesep", [b"\n", b"\r\n"])
def test_lines_of_exactly_998_octets_go_byte_for_byte_and_999_are_reencoded(smtp_server, linesep):
    at_limit = (b"y" * 998 + linesep) * 3
    received = forward(HEAD.replace(b"\n", linesep) + linesep + at_limit + b"z" * 999 + linesep, smtp_server)
    assert received.message["Content-Transfer-Encoding"] == "base64"
    assert received.message.get_payload(decode=True) == at_limit + b"z" * 999 + linesep


def test_a_flood_of_998_octet_lines_costs_time_in_proportion_to_its_size():
    """Before: the unanchored search tried every offset of every line, 14 s for 10 MB (MAILGATE_MAX_BYTES is 25)."""
    raw = HEAD + b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n" + (b"y" * 998 + b"\r\n") * 10_000
    raw += b"--b\n\n" + b"y" * 998 + b"\n--b--\n"
    parsed = parsing.parse(raw)
    body = raw[parsing.header_section(raw)[2] :]
    with time_limit(2, Slow):
        assert not long_lines.needs_base64(body, parsed)
        assert long_lines.reencode_parts(body, parsed.message, b"\n") == body
        assert long_lines.refold(raw[: parsing.header_section(raw)[1]] * 1000, b"\n")


# --- Parts whose encoding does not keep their lines short -----------------------------------------------------------

QP_LINE = b"x" * 1000 + b"=41=\n" + b"y" * 1500 + b" caf=C3=A9"  # a soft break, escapes, and still 1500 octets
MIXED = b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n'


@pytest.mark.django_db(transaction=True)
def test_a_quoted_printable_part_with_a_raw_long_line_arrives_decoded_the_same(smtp_server):
    """Before: left as it came ("encoded already"), so the SMTP server refused the forward for every member."""
    raw = (
        HEAD + MIXED + b"\n--b\nContent-Type: text/plain\n\nfirst part\n"
        b"--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
        + QP_LINE + b"\n--b--\n"
    )  # fmt: skip
    received = forward(raw, smtp_server)
    first, second = received.message.get_payload()
    assert first.get_payload() == "first part"  # untouched
    assert second["Content-Transfer-Encoding"] == "base64"
    assert second.get_payload(decode=True) == b"x" * 1000 + b"A" + b"y" * 1500 + " café".encode()


@pytest.mark.django_db(transaction=True)
def test_a_single_quoted_printable_body_with_a_long_line_arrives_decoded_the_same(smtp_server):
    raw = HEAD + b"MIME-Version: 1.0\nContent-Transfer-Encoding: Quoted-Printable\n\n" + QP_LINE + b"\n"
    received = forward(raw, smtp_server)
    assert received.message["Content-Transfer-Encoding"] == "base64"
    assert received.message.get_payload(decode=True) == b"x" * 1000 + b"A" + b"y" * 1500 + " café\n".encode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("single", [True, False], ids=["single", "in-a-multipart"])
def test_base64_written_in_one_long_line_arrives_with_the_same_bytes(smtp_server, single):
    """Some writers put a whole attachment's base64 on one line; before, it was left so and refused."""
    data = bytes(range(256)) * 40
    encoded = base64.b64encode(data)  # 13,656 octets, one line
    part = b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + encoded + b"\n"
    raw = HEAD + b"MIME-Version: 1.0\n" + part if single else HEAD + MIXED + b"\n--b\n" + part + b"--b--\n"
    received = forward(raw, smtp_server)
    leaf = received.message if single else received.message.get_payload()[0]
    assert leaf["Content-Transfer-Encoding"] == "base64" and leaf.get_payload(decode=True) == data


def test_a_boundary_inside_a_base64_part_is_a_delimiter_for_both_readers():
    """A "--b" line inside a base64 part ends it, for the email package and for the split alike: nothing is
    re-encoded across it, and a line that merely contains "--b" is no delimiter."""
    raw = (
        HEAD + MIXED + b"\n--b\nContent-Transfer-Encoding: base64\n\nQUJD\n--b\n\n" + b"x" * 1200 + b"--b\n"
        b"--b\n\nlast\n--b--\n"
    )  # fmt: skip
    parsed = parsing.parse(raw)
    assert parsed.complete and len(parsed.message.get_payload()) == 3
    body = raw[parsing.header_section(raw)[2] :]
    out = long_lines.reencode_parts(body, parsed.message, b"\n")
    assert not long_lines.has_long_line(out)
    again = email.message_from_bytes(raw[: parsing.header_section(raw)[2]] + out)
    first, second, third = again.get_payload()
    assert first.get_payload(decode=True) == b"ABC" and third.get_payload() == "last"
    assert second.get_payload(decode=True) == b"x" * 1200 + b"--b"


def _nested(levels, leaf):
    raw = leaf
    for level in range(levels):
        raw = (
            b'Content-Type: multipart/mixed; boundary="n%d"\n\n--n%d\n' % (level, level)
            + raw + b"\n--n%d--\n" % level
        )  # fmt: skip
    return HEAD + b"MIME-Version: 1.0\n" + raw


def test_deep_nesting_at_the_parsers_limit_is_reencoded_in_bounded_time():
    leaf = b"Content-Type: text/plain\n\n" + b"w" * 2_000_000
    raw = _nested(parsing.MAX_DEPTH - 1, leaf)
    parsed = parsing.parse(raw)
    assert parsed.complete
    body = raw[parsing.header_section(raw)[2] :]
    with time_limit(3, Slow):
        out = long_lines.reencode_parts(body, parsed.message, b"\n")
    assert not long_lines.has_long_line(out)
    part = email.message_from_bytes(raw[: parsing.header_section(raw)[2]] + out)
    while part.is_multipart():
        part = part.get_payload()[0]
    assert part.get_payload(decode=True) == b"w" * 2_000_000
    too_deep = parsing.parse(_nested(parsing.MAX_DEPTH + 1, leaf))
    assert not too_deep.complete  # beyond the limit: never split, the copy goes as it came (docs say so)


def test_an_attached_message_encoded_base64_as_a_whole_keeps_its_bytes():
    """message/rfc822 may not be encoded (RFC 2046 5.2.1); some writers do it. Its base64, one long line, is
    broken into lines (decoders skip them); before, it was read as a message whose body it re-encoded again."""
    inner = b"Subject: inner\nFrom: a@example.org\n\n" + b"hello " * 400 + b"\n"
    raw = (
        HEAD + MIXED + b"\n--b\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode(inner) + b"\n--b--\n"
    )  # fmt: skip
    parsed = parsing.parse(raw)
    start = parsing.header_section(raw)[2]
    out = long_lines.reencode_parts(raw[start:], parsed.message, b"\n")
    assert not long_lines.has_long_line(out)
    encoded = out.split(b"Content-Transfer-Encoding: base64\n\n", 1)[1].split(b"\n--b--", 1)[0]
    assert b"Content-Transfer-Encoding" not in encoded  # no header section written into it
    assert base64.b64decode(b"".join(encoded.split())) == inner
