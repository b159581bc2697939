import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.gate import parsing

from .conftest import fuzz_settings
from .factories import MAIL_DIR, mail_fixture


@pytest.mark.parametrize("path", sorted(p.name for p in MAIL_DIR.iterdir() if p.suffix == ".eml"))
def test_every_message_fixture_parses(path):
    parsed = parsing.parse(mail_fixture(path))
    assert parsed.ok and parsed.message is not None


def test_fields():
    parsed = parsing.parse(mail_fixture("plain.eml"))
    assert (parsed.message_id, parsed.subject, parsed.from_address, parsed.from_name) == (
        "<plain-1@example.com>",
        "Lab on Thursday",
        "ann@example.com",
        "Ann Smith",
    )
    assert parsed.header("received")[0].startswith("from mx.example.com")
    assert parsed.first("x-nothing") == ""


def test_encoded_words_are_decoded():
    parsed = parsing.parse(mail_fixture("encoded_headers.eml"))
    assert parsed.from_name == "Ángela Gómez" and parsed.from_address == "angela@example.com"
    assert parsed.subject == "Zajęcia w czwartek — sala 12"


def test_missing_headers_are_empty_and_broken_mime_is_noted():
    bare = parsing.parse(mail_fixture("missing_headers.eml"))
    assert bare.ok and (bare.from_address, bare.subject, bare.message_id) == ("", "", "")
    broken = parsing.parse(mail_fixture("broken_mime.eml"))
    assert broken.ok and "CloseBoundaryNotFoundDefect" in broken.error


def test_huge_and_malformed_header_values_do_not_fail():
    huge = parsing.parse(mail_fixture("huge_headers.eml"))
    assert huge.ok and huge.subject.startswith("Very long subject") and len(huge.subject) <= 998
    bad = parsing.parse(b'From: <<<@@@>>>, "unclosed\nTo: ,,,@\nMessage-ID: <\nSubject: =?utf-8?B?####?=\n\nx')
    assert bad.ok and bad.from_address == ""


def test_bytes_without_a_header_section_are_not_ok():
    for raw in (b"", b"\n\nbody only", mail_fixture("not_a_message.bin"), b"just text\n"):
        parsed = parsing.parse(raw)
        assert not parsed.ok and parsed.error == "no header section"
    assert parsing.parse(b"From ann@example.com Sat Nov 21 10:00:00 2026\nSubject: mbox\n\nx").ok


def test_null_senders():
    assert all(parsing.is_null_sender(s) for s in ("", "<>", " <> ", "MAILER-DAEMON", None))
    assert not parsing.is_null_sender("ann@example.com")


@fuzz_settings(300)
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_parse_never_raises(raw):
    parsed = parsing.parse(raw)
    assert isinstance(parsed.ok, bool)
