"""DKIM keys: made right, at most two published per domain, rotated and retired; their DNS records."""

import base64
import datetime

import dkim as dkimpy
import pytest
from django.utils import timezone

from dbmail.exceptions import DkimError
from dbmail.models import DkimKey
from dbmail.ops import dkimkeys

from .dnsstub import StubDNS

pytestmark = pytest.mark.django_db

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\r\n\r\nbody\r\n"
NOV = datetime.datetime(2026, 11, 30, 12, tzinfo=datetime.UTC)


def test_the_default_key_is_rsa_2048_under_a_dated_selector_and_it_works():
    key = dkimkeys.generate("Example.ORG", now=NOV)
    assert (key.domain, key.selector, key.algorithm, key.active) == ("example.org", "s202611", "rsa-sha256", True)
    assert dkimkeys.key_bits(key) == 2048
    assert key.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    # What dkimpy signs with this private key, the published public key verifies.
    dns = StubDNS().publish(key)
    signature = dkimpy.sign(MESSAGE, b"s202611", b"example.org", key.private_key.encode())
    assert dkimpy.verify(signature + MESSAGE, dnsfunc=dns.dkim_lookup)


def test_ed25519_keys_are_32_byte_seeds_with_a_32_byte_public_key():
    key = dkimkeys.generate("example.org", algorithm="ed25519", now=NOV)
    assert key.selector == "e202611" and key.algorithm == DkimKey.Algorithm.ED25519
    assert len(base64.b64decode(key.private_key)) == len(base64.b64decode(key.public_key)) == 32
    assert dkimkeys.txt_value(key) == f"v=DKIM1; k=ed25519; p={key.public_key}"


def test_a_taken_default_selector_gets_a_number():
    first = dkimkeys.generate("example.org", algorithm="ed25519", now=NOV)
    second = dkimkeys.generate("example.org", algorithm="ed25519", now=NOV)
    assert (first.selector, second.selector) == ("e202611", "e202611-2")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": "not a domain"}, "is not a domain name"),
        ({"domain": "localhost"}, "is not a domain name"),
        ({"domain": "example.org", "selector": "bad selector"}, "is not a selector"),
        ({"domain": "example.org", "algorithm": "dsa"}, "is not an algorithm"),
        ({"domain": "example.org", "bits": 512}, "is not a key size for RSA"),
    ],
)
def test_bad_input_is_refused_with_a_reason_and_nothing_stored(kwargs, message):
    with pytest.raises(DkimError, match=message):
        dkimkeys.generate(**kwargs)
    assert not DkimKey.objects.exists()


def test_an_international_domain_is_kept_in_a_labels():
    assert dkimkeys.generate("bücher.example", algorithm="ed25519").domain == "xn--bcher-kva.example"


def test_a_selector_is_used_once_per_domain():
    dkimkeys.generate("example.org", selector="mail", algorithm="ed25519")
    with pytest.raises(DkimError, match="already has a key with selector 'mail'"):
        dkimkeys.generate("example.org", selector="mail", algorithm="ed25519")
    assert dkimkeys.generate("example.net", selector="mail", algorithm="ed25519").selector == "mail"


def test_at_most_two_keys_are_published_at_once():
    dkimkeys.generate("example.org", selector="one", algorithm="ed25519")
    dkimkeys.generate("example.org", selector="two", algorithm="ed25519")
    with pytest.raises(
        DkimError, match=r"already has 2 published keys \(two, one\).*dbmail_dkim retire example.org one"
    ):
        dkimkeys.generate("example.org", selector="three", algorithm="ed25519")
    dkimkeys.retire("example.org", "one")
    assert dkimkeys.generate("example.org", selector="three", algorithm="ed25519").active


def test_rotate_makes_a_key_like_the_current_one_which_signs_while_the_old_stays_published():
    old = dkimkeys.generate("example.org", bits=1024, now=NOV)
    new = dkimkeys.rotate("example.org", now=NOV + datetime.timedelta(days=40))
    assert (new.selector, new.algorithm, dkimkeys.key_bits(new)) == ("s202701", "rsa-sha256", 1024)
    assert dkimkeys.active_keys("example.org") == [new, old]
    with pytest.raises(DkimError, match="has no published key to rotate"):
        dkimkeys.rotate("example.net")


def test_retire_stops_a_key_once():
    key = dkimkeys.generate("example.org", selector="old", algorithm="ed25519")
    retired = dkimkeys.retire("example.org", "old")
    assert retired.pk == key.pk and not retired.active and retired.retired_at <= timezone.now()
    assert dkimkeys.active_keys("example.org") == []
    with pytest.raises(DkimError, match="was already retired"):
        dkimkeys.retire("example.org", "old")
    with pytest.raises(DkimError, match="has no key with selector 'gone'"):
        dkimkeys.retire("example.org", "gone")


def test_the_txt_record_is_cut_into_strings_of_at_most_255_bytes():
    key = dkimkeys.generate("example.org", selector="big", bits=4096)
    value = dkimkeys.txt_value(key)
    strings = dkimkeys.txt_strings(value)
    assert len(value) > 700 and len(strings) == -(-len(value) // 255)
    assert all(len(s) <= 255 for s in strings) and "".join(strings) == value
    line = dkimkeys.zone_line(key)
    assert line.startswith('big._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=')
    assert line.count('"') == 2 * len(strings)
    assert dkimkeys.txt_strings("x" * 255) == ["x" * 255] and dkimkeys.txt_strings("x" * 256) == ["x" * 255, "x"]
