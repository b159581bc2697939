"""Attack (issue 12, 6): mutated bounces and messages make the gate print tracebacks and lose findings.

A property test mutates the suite's own fixtures (tests/mail/: bytes flipped,
8-bit bytes in header fields, headers cut, charsets renamed, parts nested,
messages truncated) and feeds each through the gate's pipe entry as a bounce
(to a VERP address, null sender) or as list mail. Wanted for every input: an
exit code from the list, the bytes stored exactly, and nothing on stderr but
the gate's own one-line messages. The normal suite runs 200 examples with a
fixed seed; `--hypothesis-profile=long` runs 20,000 random ones (README, Tests).
"""

import email
import io
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbmail.content import verp
from dbmail.models import TextOfEmail
from mailgate.gate import bounces
from mailgate.gate import receive as gate
from mailgate.models import Bounce, InboundMessage

from .conftest import fuzz_settings
from .factories import MAIL_DIR, EmailListFactory, mail_fixture

LIST = "physics@lists.example.org"
FIXTURES = sorted(p.name for p in MAIL_DIR.iterdir() if p.is_file())
CHARSETS = [b"unknown-8bit", b"x-no-such-charset", b"utf-7", b"", b'"', b"utf-8*en", b"\xe9\xff", b"iso-8859-99"]
_HEADER_LINE = re.compile(rb"(?m)^[!-9;-~]+:[^\n]*\n")
_CHARSET = re.compile(rb"(?i)charset=\"?[^\s;\"]*\"?")


def _flip(draw, raw):
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 20))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _eight_bit_header(draw, raw):
    lines = list(_HEADER_LINE.finditer(raw[: raw.find(b"\n\n") + 1 if b"\n\n" in raw else len(raw)]))
    if not lines:
        return raw
    line = lines[draw(st.integers(0, len(lines) - 1))]
    cut = draw(st.integers(line.start(), line.end() - 1))
    return raw[:cut] + draw(st.binary(min_size=1, max_size=12).map(lambda b: bytes(c | 0x80 for c in b))) + raw[cut:]


def _cut_header(draw, raw):
    lines = list(_HEADER_LINE.finditer(raw))
    if not lines:
        return raw
    line = lines[draw(st.integers(0, len(lines) - 1))]
    if draw(st.booleans()):  # drop the field
        return raw[: line.start()] + raw[line.end() :]
    return raw[: draw(st.integers(line.start(), line.end()))] + b"\n" + raw[line.end() :]  # cut it short


def _charset(draw, raw):
    return _CHARSET.sub(lambda m: b"charset=" + draw(st.sampled_from(CHARSETS)), raw)


def _nest(draw, raw):
    kind = draw(st.sampled_from([b"multipart/mixed", b"multipart/report; report-type=delivery-status"]))
    inner = draw(st.sampled_from([b"message/rfc822", b"text/plain", b"message/delivery-status"]))
    return (
        b"From: MAILER-DAEMON@example.net\nSubject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        b"Content-Type: "
        + kind
        + b'; boundary="nest"\n\n--nest\nContent-Type: '
        + inner
        + b"\n\n"
        + raw
        + b"\n--nest--\n"
    )


def _truncate(draw, raw):
    return raw[: draw(st.integers(0, len(raw)))]


MUTATIONS = [_flip, _eight_bit_header, _cut_header, _charset, _nest, _truncate]


@st.composite
def mutated_mail(draw):
    raw = mail_fixture(draw(st.sampled_from(FIXTURES)))
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4)):
        raw = mutation(draw, raw)
    return raw


@pytest.fixture
def sent_email(settings, db):
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"
    EmailListFactory(name="Physics", regex="physics", addresses="member@example.net")
    return TextOfEmail.objects.create(
        to_address="bob@example.net", from_header="office@example.org", message_id="<sent@example.org>", status="sent"
    )


@pytest.fixture(autouse=True)
def console_logging():
    """The site's LOGGING in production: the root logger writes to the process's stderr (the MTA's log)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    yield
    logging.getLogger().removeHandler(handler)


def through_the_pipe(raw, recipient, sender):
    """gate.main as pipe.py calls it: (exit code, what it wrote to stdout, to stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = gate.main(io.BytesIO(raw), stdout, stderr, {}, recipient, sender)
    return code, stdout.getvalue(), stderr.getvalue()


@fuzz_settings(200)
@given(raw=mutated_mail(), as_bounce=st.booleans())
def test_mutated_mail_never_traces_back_and_is_stored_byte_for_byte(sent_email, capfd, raw, as_bounce):
    recipient = verp.envelope_sender(sent_email.message_id, "office@example.org") if as_bounce else LIST
    before = InboundMessage.objects.order_by("-id").values_list("id", flat=True).first() or 0
    code, out, err = through_the_pipe(raw, recipient, "" if as_bounce else "ann@example.com")
    captured = capfd.readouterr()  # anything printed past the gate's streams, straight to the process's fds
    assert code in gate.EXIT_CODES
    for text in (out, err, captured.out, captured.err):
        assert "Traceback" not in text
    assert all(line.startswith("mailgate: ") for line in (out + err).splitlines())
    assert not captured.err.strip() and not captured.out.strip()
    stored = InboundMessage.objects.filter(id__gt=before).get()
    assert bytes(stored.raw) == raw
    assert stored.status != InboundMessage.Status.FAILED, stored.note


def test_a_qmail_bounce_with_8_bit_bytes_in_its_from_is_still_read(sent_email):
    """flufl.bounce raised on this (AttributeError: 'Header' object has no attribute 'lower') and found nothing."""
    raw = b"From: Mail Delivery \xe9\xff <MAILER-DAEMON@mx.example.net>\n" + mail_fixture("dsn_qmail.eml")
    code, out, err = through_the_pipe(raw, verp.envelope_sender(sent_email.message_id, "x"), "")
    assert (code, err) == (0, "")
    (found,) = Bounce.objects.all()
    assert (found.bounce_type, found.status_code, found.email) == ("hard", "5.1.1", sent_email)


def test_one_failing_detector_loses_nothing_of_the_others(caplog):
    # The standard library's own compat32 parse gives `Header` objects for 8-bit fields, which
    # two of flufl.bounce's detectors (Sina, Yahoo) run before Qmail's cannot handle.
    raw = b"From: Mail Delivery \xe9\xff <MAILER-DAEMON@mx.example.net>\n" + mail_fixture("dsn_qmail.eml")
    message = email.message_from_bytes(raw)
    caplog.set_level(logging.WARNING, logger="mailgate.gate.bounces")
    temporary, permanent = bounces.run_detectors(message)
    assert (temporary, permanent) == (set(), {b"bob@example.net"})
    failed = [r for r in caplog.records if "bounce detector" in r.getMessage()]
    assert {r.getMessage().split()[3] for r in failed} >= {"Sina", "Yahoo"}
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in failed)


def test_a_failure_after_storing_is_one_line_and_exit_0(sent_email):
    """A fault past storing (here a list naming a resolver nobody registered) prints one line and answers 0."""
    EmailListFactory(name="Broken", regex="broken", resolver="no_such_resolver", seq=1)
    raw = mail_fixture("plain.eml")
    code, out, err = through_the_pipe(raw, "broken@lists.example.org", "ann@example.com")
    assert code == 0 and "Traceback" not in out + err
    assert err and all(line.startswith("mailgate: ") for line in (out + err).splitlines()), err
    inbound = InboundMessage.objects.get()
    assert bytes(inbound.raw) == raw and inbound.status == InboundMessage.Status.FAILED
    assert "Traceback" in inbound.note  # kept for the admin, not printed to the MTA
