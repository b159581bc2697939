"""Attack (issue 12, 5): messages built to make the gate's parsing slow or big.

The shapes are bench/gate_worst.py's (where their figures at MAILGATE_MAX_BYTES
are measured), here at modest sizes. Each goes through the gate and must be
stored byte for byte and classified. What bounds the cost is asserted on
what the code does, not on the clock: the email package's structured header
parser (quadratic on long address lists, recursive on nested comments) never
sees a long value, and no more than MAX_PARTS parts or MAX_DEPTH levels are
ever walked.
"""

from email.headerregistry import HeaderRegistry

import pytest

from bench.gate_worst import build
from dbmail.content import verp
from dbmail.models import TextOfEmail
from mailgate.gate import bounces, parsing
from mailgate.gate import receive as gate
from mailgate.mailboxes import store as mailbox
from mailgate.models import InboundMessage, Message

from .factories import EmailListFactory, MailFolderFactory

pytestmark = pytest.mark.django_db
LIST = "worst@lists.example.org"
# (shape, size in bytes, whether its whole MIME structure is parsed)
SHAPES = [
    ("to_header", 1_000_000, True),
    ("to_one_line", 1_000_000, True),
    ("header_fields", 1_000_000, True),
    ("encoded_subject", 1_000_000, True),
    ("address_comments", 200_000, True),
    ("content_type_params", 1_000_000, True),
    ("parts", 20_000 * 36, False),  # 20,000 parts
    ("nesting", 200 * 70, False),  # 200 levels
    ("attached_messages", 200 * 50, False),
    ("long_line", 10_000_000, True),
    ("empty_lines", 2_000_000, False),
]


@pytest.fixture(autouse=True)
def worst_list(settings):
    settings.MAILGATE_SEND_NOW_MAX = 0  # copies are queued, not sent: the parsing is what is measured
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"
    return EmailListFactory(name="Worst", regex="worst", addresses="member@example.net")


@pytest.fixture
def structured_values(monkeypatch):
    """The length of every value the email package's structured header parser is given."""
    seen = []
    original = HeaderRegistry.__call__

    def measured(self, name, value):
        seen.append(len(value))
        return original(self, name, value)

    monkeypatch.setattr(HeaderRegistry, "__call__", measured)
    return seen


@pytest.mark.parametrize("shape, size, complete", SHAPES, ids=[s[0] for s in SHAPES])
def test_each_worst_shape_is_stored_byte_for_byte_and_classified(shape, size, complete, structured_values):
    raw = build(shape, size)
    result = gate.run(raw, LIST, "ann@example.com")
    assert result.code == 0, result.message
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert bytes(inbound.raw) == raw
    assert inbound.status == InboundMessage.Status.FORWARDED, inbound.note
    assert TextOfEmail.objects.get().to_address == "member@example.net"
    assert max(structured_values, default=0) <= parsing.MIME_FIELD_CHARS + 100  # only our own short headers
    parsed = parsing.parse(raw)
    assert parsed.complete == complete, parsed.incomplete
    assert sum(1 for _ in parsing.walk(parsed.message)) <= parsing.MAX_PARTS
    assert parsing.nesting(parsed.message) <= parsing.MAX_DEPTH
    assert len(parsed.first("to")) <= parsing.MAX_FIELD_BYTES and len(parsed.subject) <= 998


def test_fields_past_the_first_thousand_are_still_found():
    raw = build("header_fields", 200_000).replace(b"\r\n\r\n", b"\r\nX-Loop: worst@lists.example.org\r\n\r\n", 1)
    parsed = parsing.parse(raw)
    assert len(parsed.headers) == parsing.MAX_HEADER_FIELDS
    assert parsed.header("x-loop") == ["worst@lists.example.org"]
    assert gate.run(raw, LIST, "ann@example.com").code == 0
    assert InboundMessage.objects.get().status == InboundMessage.Status.LOOP


def test_huge_bounces_are_classified_without_the_heuristic_detectors(settings):
    email = TextOfEmail.objects.create(
        to_address="bob@example.net", from_header="office@example.org", message_id="<sent@example.org>", status="sent"
    )
    address = verp.envelope_sender(email.message_id, "office@example.org")
    big = build("big_bounce", 2 * bounces.HEURISTICS_MAX_BYTES)
    result = gate.run(big, address, "")
    (found,) = InboundMessage.objects.get(pk=result.inbound_id).bounces.all()
    assert (found.bounce_type, found.status_code, found.email) == ("hard", "5.1.1", email)
    many = build("dsn_recipients", 1_000_000)  # more recipient blocks than parts are parsed
    result = gate.run(many, address, "")
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert bytes(inbound.raw) == many and inbound.status == InboundMessage.Status.BOUNCE
    assert not parsing.parse(many).complete


def test_the_mailbox_poller_stores_a_worst_shape_and_extracts_nothing_past_the_limits(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    raw = build("parts", 20_000 * 36)
    message, created = mailbox.store_incoming(MailFolderFactory(), 7, 1, raw)
    assert created and message.raw == raw
    assert message.status == Message.Status.RECEIVED and "body not parsed" in message.last_error
    assert not message.parts.exists()
