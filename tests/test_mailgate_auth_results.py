"""Reading Authentication-Results fields (RFC 8601), mailgate.gate.auth_results."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.gate.auth_results import MAX_RESULTS, Field, Result, parse

from .conftest import fuzz_settings


def test_several_results_with_comments_and_quoted_values():
    field = parse(
        "mx.ourorg.example (Postfix 3.9) 1; dkim=pass (2048-bit key; secure) header.d=ourorg.example "
        'header.s=s1 header.b="AbC;d=e"; spf=fail (sender IP is 192.0.2.1) smtp.mailfrom="a;b"@evil.example;\r\n'
        "\tdmarc=pass (p=reject dis=none) header.from=OurOrg.example"
    )
    assert field.authserv_id == "mx.ourorg.example"
    assert field.results == [
        Result("dkim", "pass", {"header.d": "ourorg.example", "header.s": "s1", "header.b": "AbC;d=e"}),
        Result("spf", "fail", {"smtp.mailfrom": "a;b@evil.example"}),
        Result("dmarc", "pass", {"header.from": "OurOrg.example"}),
    ]


def test_comments_nest_and_hide_everything_in_them():
    field = parse(
        "mx.ourorg.example; dmarc=fail (a (nested \\) comment; dmarc=pass) header.from=x) header.from=ourorg.example"
    )
    assert field.results == [Result("dmarc", "fail", {"header.from": "ourorg.example"})]


def test_spaces_around_names_versions_and_reasons():
    field = parse('mx.ourorg.example ; dkim / 1 = PASS reason="good sig" header . d = ourorg.example')
    assert field.results == [Result("dkim", "pass", {"header.d": "ourorg.example"})]


@pytest.mark.parametrize(
    "value, authserv_id",
    [
        ("mx.ourorg.example; none", "mx.ourorg.example"),
        ('"mx.ourorg.example"; dmarc=pass', "mx.ourorg.example"),
        ("MX.OurOrg.Example; garbage; dmarc", "mx.ourorg.example"),
    ],
)
def test_no_results_or_unreadable_ones_keep_the_authserv_id(value, authserv_id):
    field = parse(value)
    assert field.authserv_id == authserv_id
    assert all(r.method == "dmarc" for r in field.results)


@pytest.mark.parametrize(
    "value", ["", "   ", "; dmarc=pass", "(only a comment)", "= dmarc", '""; x=y', '"mx.ourorg.example']
)
def test_a_field_without_an_authserv_id_is_none(value):
    assert parse(value) is None


def test_a_huge_field_is_read_only_in_part_and_quickly():
    value = "mx.ourorg.example" + "; dkim=fail header.d=x.example" * 100_000
    field = parse(value)
    assert len(field.results) == MAX_RESULTS


@fuzz_settings(300)
@given(st.text(alphabet=st.sampled_from(list('mx.ourorg; dkim=pass()"\\@ \t\r\nheader.d/1')), max_size=200))
def test_property_any_text_parses_to_a_field_or_none(value):
    field = parse(value)
    assert field is None or (isinstance(field, Field) and field.authserv_id)  # '";"' is a quoted id: ";"
    for result in [] if field is None else field.results:
        assert result.method and result.result and "=" not in result.method + result.result
