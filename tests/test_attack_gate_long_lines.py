"""Attacks on long lines in forwards (mailgate.gate.long_lines): lines at the limit, line ends that split
a line for one reader and not for another, encodings that lie, boundaries inside parts, deep nesting.
Forwards go to a real SMTP server on loopback (aiosmtpd refuses a line over 1000 octets, as SMTP says)."""

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
