import pytest

from dbmail.content import verp
from dbmail.content.recipients import Recipient
from dbmail.intake.expand import build_email
from dbmail.intake.outbox import enqueue

from .factories import MessageRequestFactory, TextOfEmailFactory

MID = "<176380000012.4242.9876543210@example.org>"


@pytest.fixture
def verp_on(settings):
    settings.DBMAIL_VERP_DOMAIN = "lists.example.org"
    settings.DBMAIL_VERP_PREFIX = "bounces"
    return settings


def test_off_without_a_domain(settings):
    settings.DBMAIL_VERP_DOMAIN = ""
    assert verp.envelope_sender(MID, "office@example.org") == "office@example.org"
    assert not verp.is_verp_address("bounces+x.y@lists.example.org")
    assert verp.decode("bounces+x.y@lists.example.org") is None


def test_address_round_trips_and_fits_the_local_part_limit(verp_on):
    address = verp.envelope_sender(MID, "office@example.org")
    local, _, domain = address.rpartition("@")
    assert domain == "lists.example.org"
    assert local.startswith("bounces+176380000012.4242.9876543210.")
    assert len(local) <= 64
    assert verp.decode(address) == "176380000012.4242.9876543210"
    # MTAs may change the case of the local part.
    assert verp.decode(address.upper()) == "176380000012.4242.9876543210"


def test_forged_or_foreign_addresses_decode_to_nothing(verp_on):
    good = verp.envelope_sender(MID, "x@example.org")
    local, _, domain = good.rpartition("@")
    tampered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    assert verp.decode(tampered) is None
    other_id = "bounces+176380000012.4242.1111111111." + local.rpartition(".")[2] + "@" + domain
    assert verp.decode(other_id) is None
    assert verp.decode(local + "@elsewhere.example") is None
    assert verp.decode("bounces+nodot@lists.example.org") is None
    assert verp.decode("bounces@lists.example.org") is None


def test_different_secret_gives_a_different_signature(verp_on):
    first = verp.envelope_sender(MID, "x@example.org")
    verp_on.SECRET_KEY = "another-secret"
    assert verp.decode(first) is None


def test_message_ids_that_cannot_be_encoded_fall_back(verp_on):
    assert verp.envelope_sender("<a b@example.org>", "x@example.org") == "x@example.org"
    assert verp.envelope_sender("<" + "1" * 60 + "@example.org>", "x@example.org") == "x@example.org"


@pytest.mark.django_db
def test_find_email(verp_on):
    email = TextOfEmailFactory(message_id=MID)
    TextOfEmailFactory()
    assert verp.find_email(verp.envelope_sender(MID, "x@example.org")) == email
    assert verp.find_email("bounces+176380000012.4242.9876543210.aaaaaaaaaaaa@lists.example.org") is None


@pytest.mark.django_db
def test_expansion_and_the_outbox_use_verp_senders(verp_on):
    request = MessageRequestFactory()
    from django.utils import timezone

    from dbmail.content.rendering import CompiledRequest

    built = build_email(request, CompiledRequest(request), Recipient(email="ann@example.net"), timezone.now())
    assert verp.decode(built.envelope_sender) == built.message_id.strip("<>").rpartition("@")[0]
    queued = enqueue("bob@example.net", "Hi", "Text")
    assert verp.find_email(queued.envelope_sender) == queued
    explicit = enqueue("cy@example.net", "Hi", "Text", envelope_sender="own@example.org")
    assert explicit.envelope_sender == "own@example.org"


@pytest.mark.django_db
def test_without_verp_the_envelope_sender_is_the_from_address(settings):
    settings.DBMAIL_VERP_DOMAIN = ""
    assert enqueue("bob@example.net", "Hi", "Text").envelope_sender == "noreply@example.org"


@pytest.mark.django_db
def test_find_email_looks_in_each_sender_domain_without_scanning_the_table(verp_on, django_assert_max_num_queries):
    # Message-IDs are in their From domain now: each domain the site sends from is an exact lookup.
    from .factories import SenderAccountFactory

    account = SenderAccountFactory(address="news@other.example")
    email = TextOfEmailFactory(account=account, message_id="<1763.77@other.example>")
    address = verp.envelope_sender(email.message_id, "news@other.example")
    with django_assert_max_num_queries(3) as queries:
        assert verp.find_email(address) == email
    assert not any("LIKE" in q["sql"] for q in queries.captured_queries)
