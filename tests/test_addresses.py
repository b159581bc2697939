"""International addresses: which are valid, and how they are written for the envelope and the headers."""

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dbmail.content import addresses
from dbmail.content.recipients import address_error

from .conftest import fuzz_settings


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


# Strings near the shape of an address, so both the quick check and Django's validator get exercised.
_ADDRESS_LIKE = st.from_regex(
    r"\A[A-Za-z0-9.!#$%&'*+/=?^_`{|}~ \"(),:;<>@\[\]\\-]{0,20}@[A-Za-z0-9._ -]{0,20}(\.[A-Za-z0-9-]{0,8})?\Z"
)


@fuzz_settings(500)
@given(st.one_of(_ADDRESS_LIKE, st.text(max_size=40)))
def test_the_quick_check_of_common_addresses_accepts_nothing_djangos_validator_refuses(address):
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    if addresses._SURELY_VALID.fullmatch(address) and len(address) <= 320:
        try:
            validate_email(address)
        except ValidationError:
            pytest.fail(f"the quick check accepts {address!r}, which Django refuses")


# --- one key per mailbox (mailbox_key), however it is written ---

ANNA = "anna@xn--bcher-kva.example"
ANNA_SPELLINGS = [
    "anna@bücher.example",  # U-labels
    "anna@xn--bcher-kva.example",  # A-labels
    "anna@XN--BCHER-KVA.example",  # mixed-case A-labels
    "Anna@Bücher.Example",
    "anna@bücher.example.",  # a trailing dot (the root)
    "anna@ｂüｃｈｅｒ．ｅｘａｍｐｌｅ",  # fullwidth forms, which UTS #46 maps
    "anna@bücher。example",  # an ideographic full stop between labels
    '"anna"@bücher.example',  # quotes that need not be there (RFC 5321 4.1.2)
    '"\\a\\n\\n\\a"@xn--bcher-kva.example',  # quoted pairs that need not be there
    "  anna@bücher.example \t",
    "<anna@bücher.example>",
    "Anna Smith <anna@Bücher.example.>",
    '"Smith, Anna" <"ANNA"@bücher.example>',
]


@pytest.mark.parametrize("spelling", ANNA_SPELLINGS)
def test_every_spelling_of_a_mailbox_has_one_key(spelling):
    assert addresses.mailbox_key(spelling) == ANNA


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ('"anna smith"@x.org', '"anna smith"@x.org'),  # the quotes make it a mailbox of its own
        ('"Anna Smith"@X.org', '"anna smith"@x.org'),
        ('"anna@home"@x.org', '"anna@home"@x.org'),
        ('"a\\"b"@x.org', '"a\\"b"@x.org'),  # only the escapes it needs
        ('"a..b"@x.org', '"a..b"@x.org'),  # not a dot-atom: the quotes stay
        ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
        ("JÖRG@exämple.org", "jörg@xn--exmple-cua.org"),
        ("Jo\u0308rg@x.org", "jörg@x.org"),  # a UTF-8 local part in NFC
        ("user@[IPv6:::1]", "user@[ipv6:::1]"),
        ("not an address", "not an address"),
        ("", ""),
    ],
)
def test_distinct_mailboxes_keep_distinct_keys(address, key):
    assert addresses.mailbox_key(address) == key
    assert key not in (addresses.mailbox_key("annasmith@x.org"), addresses.mailbox_key("anna.smith@x.org"))


def test_a_quoted_local_part_with_a_space_is_a_valid_address_and_goes_out_as_written():
    assert address_error('"anna smith"@x.org') == ""
    assert addresses.wire('"anna smith"@x.org') == '"anna smith"@x.org'
    assert address_error('"anna\\"smith"@x.org') == ""
    assert address_error('"anna\nsmith"@x.org') != ""


@pytest.mark.parametrize("address", ["user@[127.0.0.1]", "user@[IPv6:::1]", "user@[ipv6:fe80::1]", "u@ [10.0.0.1]"])
def test_domain_literals_are_refused_with_their_reason(address):
    assert address_error(address) == (
        f"domain literal refused in {address!r}: mail goes to domain names only, never to a host named by its IP address"
    )


_LABEL = st.sampled_from(["bücher", "example", "xn--bcher-kva", "mañana", "straße", "例子", "a-b", "x1"])
_LOCAL = st.from_regex(r"\A[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,8}(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,8}){0,2}\Z")


def _ascii_upper(text):
    return "".join(c.upper() if c.isascii() else c for c in text)


def _fullwidth(text):
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and c.isalnum() else c for c in text)


@fuzz_settings(300)
@given(_LOCAL, st.lists(_LABEL, min_size=1, max_size=3), st.sampled_from(["org", "example", "de"]), st.data())
def test_spellings_of_generated_mailboxes_collapse_to_one_key(local, labels, tld, data):
    domain = ".".join([*labels, tld])
    key = addresses.mailbox_key(f"{local}@{domain}")
    quoted_local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    spellings = [
        f"{local.upper()}@{_ascii_upper(domain)}",  # str.upper would turn ß into SS: another domain
        f"{quoted_local}@{domain}",
        f"{local}@{domain}.",
        f"{local}@{addresses.a_label(domain).upper()}",
        f" <{local}@{domain}> ",
        f"{data.draw(st.sampled_from(['Anna', 'Smith, Anna', 'Ännä']))} <{local}@{domain}>",
        f"{local}@{_fullwidth(domain)}",
    ]
    for spelling in spellings:
        assert addresses.mailbox_key(spelling) == key, spelling
    assert key == key.lower() and key.isascii() and not key.endswith(".")


@fuzz_settings(1000)
@example("@0 .")  # a dot after white space after the domain: found by CI
@example("a@x. .")
@given(st.one_of(_ADDRESS_LIKE, st.text(max_size=40), st.builds("{}@{}".format, st.text(max_size=12), _LABEL)))
def test_the_key_of_a_key_is_itself_and_the_quick_path_agrees_with_the_full_one(address):
    key = addresses.mailbox_key(address)
    assert addresses.mailbox_key(key) == key
    if addresses._PLAIN_KEY.fullmatch(address):
        local, _, domain = address.rpartition("@")
        assert key == f"{addresses._local_key(local)}@{addresses._domain_key(domain)}"


# --- one delivery spelling per mailbox (what a request's emails store) ---


@pytest.mark.parametrize(
    ("address", "spelling"),
    [
        ("ann@bücher.example", "ann@xn--bcher-kva.example"),
        ("ann@xn--bcher-kva.example", "ann@xn--bcher-kva.example"),
        ("ann@BÜCHER.example", "ann@xn--bcher-kva.example"),
        ("Anna@Bücher.Example.", "Anna@xn--bcher-kva.example"),  # an ASCII local part keeps its case
        ('"bob"@example.org', "bob@example.org"),
        ('"Bob"@Example.ORG', "Bob@example.org"),
        ('"Anna Smith"@X.org', '"Anna Smith"@x.org'),  # quotes it needs stay, with the case
        ('"a\\b"@x.org', "ab@x.org"),  # an escape it does not need goes
        ("Anna Smith <anna@bücher.example>", "anna@xn--bcher-kva.example"),
        ("JÖRG@exämple.org", "jörg@xn--exmple-cua.org"),  # a UTF-8 local part as its key (NFC, lower-case)
        ("Jo\u0308rg@x.org", "jörg@x.org"),
        ("u01234@example.org", "u01234@example.org"),
        ("not an address", "not an address"),
        ("", ""),
    ],
)
def test_the_delivery_spelling_of_an_address(address, spelling):
    assert addresses.delivery_spelling(address) == spelling


@pytest.mark.parametrize("spelling", ANNA_SPELLINGS)
def test_every_spelling_of_a_mailbox_has_one_delivery_spelling_whose_lower_case_is_its_key(spelling):
    assert addresses.delivery_spelling(spelling).lower() == ANNA


@fuzz_settings(1000)
@example('"\\a\\n"@X.org')
@example("JÖRG@exämple.org")
@given(st.one_of(_ADDRESS_LIKE, st.text(max_size=40), st.builds("{}@{}".format, st.text(max_size=12), _LABEL)))
def test_lower_of_the_delivery_spelling_is_the_key_and_the_spelling_is_stable(address):
    """What the (request, lower(to_address)) constraint compares is the mailbox key, for any input."""
    spelling = addresses.delivery_spelling(address)
    key = addresses.mailbox_key(address)
    assert spelling.lower() == key
    assert addresses.delivery_spelling(spelling) == spelling and addresses.mailbox_key(spelling) == key
    # Every letter that is not ASCII is lower-case already: PostgreSQL's lower(), whatever the database's
    # collation does with such letters, leaves them, and lower-cases ASCII ones as Python does.
    assert all(c.isascii() or c.lower() == c for c in spelling)


@fuzz_settings(300)
@given(_LOCAL, st.lists(_LABEL, min_size=1, max_size=3), st.sampled_from(["org", "example", "de"]))
def test_generated_spellings_of_a_mailbox_share_one_delivery_spelling_but_its_case(local, labels, tld):
    domain = ".".join([*labels, tld])
    spelling = addresses.delivery_spelling(f"{local}@{domain}")
    quoted_local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert spelling == f"{local}@{addresses.a_label(domain).lower()}"
    for other in (f"{quoted_local}@{domain}", f"{local}@{_ascii_upper(domain)}.", f"{local}@{_fullwidth(domain)}"):
        assert addresses.delivery_spelling(other) == spelling, other
    assert addresses.wire(spelling) == spelling  # what is stored is what goes on the wire


def test_readable_shows_an_idn_domain_in_letters_and_leaves_others():
    assert addresses.readable("ann@xn--bcher-kva.example") == "ann@bücher.example"
    assert addresses.readable("Jörg@xn--exmple-cua.org") == "Jörg@exämple.org"
    assert addresses.readable("ann@example.org") == "ann@example.org"
    assert addresses.readable("ann@xn--zz.example") == "ann@xn--zz.example"  # no valid A-label: as stored
    assert addresses.readable("") == ""
