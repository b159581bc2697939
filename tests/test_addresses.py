"""International addresses: which are valid, and how they are written for the envelope and the headers."""

import pytest

from dbmail.content import addresses
from dbmail.content.recipients import address_error


@pytest.mark.parametrize(
    "address",
    ["ann@example.org", "ann@bücher.example", "用户@例子.广告", "jörg.müller@exämple.org", "δοκιμή@παράδειγμα.δοκιμή"],
)
def test_valid_addresses_include_idn_domains_and_utf8_local_parts(address):
    assert address_error(address) == ""


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ann",
        "ann@",
        "@example.org",
        "a b@example.org",
        "jörg..x@example.org",
        "jö rg@example.org",
        "j\u200bx@example.org",
        "ü" * 40 + "@example.org",
        "ann@bad_domain",
        "ann@-x-.example",
    ],
)
def test_invalid_addresses_say_so(address):
    assert address_error(address) == f"invalid address {address!r}"


def test_the_envelope_gets_a_labels_and_a_utf8_local_part_only_with_smtputf8():
    assert addresses.wire("ann@example.org") == "ann@example.org"
    assert addresses.wire("ann@bücher.example") == "ann@xn--bcher-kva.example"
    assert addresses.wire("用户@例子.广告", smtputf8=True) == "用户@xn--fsqu00a.xn--4rr70v"
    with pytest.raises(addresses.NeedsSMTPUTF8, match="the server does not offer SMTPUTF8"):
        addresses.wire("用户@example.org")
    for broken in ("", "  ", "ann", "a<b>@example.org", "ann@example.org\r\nRCPT TO:<x@y>"):
        with pytest.raises(addresses.AddressError):
            addresses.wire(broken)
    with pytest.raises(addresses.AddressError, match="not a valid international domain name"):
        addresses.wire("ann@bü_cher.example")


def test_headers_encode_names_and_keep_addresses_whole():
    assert addresses.display("Ann", "ann@xn--bcher-kva.example") == "Ann <ann@xn--bcher-kva.example>"
    assert addresses.display('Ann "A." Smith', "a@b.org") == '"Ann \\"A.\\" Smith" <a@b.org>'
    assert addresses.display("Jörg", "jörg@x.org").endswith("?= <jörg@x.org>")
    assert addresses.display("", "a@b.org") == "a@b.org"
    assert addresses.header("The Office <office@example.org>") == "The Office <office@example.org>"
    assert addresses.header("Ann <ann@bücher.example>") == "Ann <ann@xn--bcher-kva.example>"
    assert addresses.header_needs_smtputf8("Jörg <jörg@x.org>") and not addresses.header_needs_smtputf8("Ann <a@ü.de>")
