"""dbmail.send.destinations: which group a recipient's domain is in, and DBMAIL_DESTINATION_GROUPS checked at start-up."""

import pytest
from django.core import checks

from dbmail.intake import outbox
from dbmail.send import destinations
from dbmail.send.destinations import GroupsError, parse

from .factories import SenderAccountFactory
from .test_settings import run_manage


@pytest.mark.parametrize(
    "address,group",
    [
        ("ann@gmail.com", "gmail"),
        ("ann@GoogleMail.com", "gmail"),
        ("bob@hotmail.com", "microsoft"),
        ("bob@hotmail.co.uk", "microsoft"),
        ("bob@live.fr", "microsoft"),
        ("bob@outlook.com", "microsoft"),
        ("bob@msn.com", "microsoft"),
        ("cy@yahoo.co.jp", "yahoo"),
        ("cy@aol.com", "yahoo"),
        ("di@example.org", "default"),
        ("di@mail.gmail.com", "default"),  # a domain pattern is that domain, not its subdomains
        ("di@hotmail.example.co.uk", "default"),  # label.* is followed by one or two labels only
        ("di@notgmail.com", "default"),
    ],
)
def test_the_built_in_groups(address, group):
    assert parse({}).of(address) == group


def test_a_group_of_ones_own_a_changed_built_in_and_a_removed_one():
    groups = parse(
        {
            "club": {"domains": ["club.example", "*.club.example"], "rate_per_minute": 60, "max_connections": 2},
            "gmail": {"rate_per_minute": 100},
            "yahoo": None,
        }
    )
    assert groups.of("a@club.example") == groups.of("a@lists.club.example") == "club"
    assert groups["club"].rate_per_minute == 60 and groups["club"].max_connections == 2
    assert groups["gmail"].rate_per_minute == 100 and groups["gmail"].domains == ("gmail.com", "googlemail.com")
    assert groups["gmail"].max_connections == 10  # what was not given stays built in
    assert groups.of("a@yahoo.com") == "default"
    assert groups["no-longer-configured"] is groups.default  # a row made before a change


@pytest.mark.parametrize(
    "value,words",
    [
        ([], "must be a JSON object"),
        ({"Bad Name": {}}, "is not a group name"),
        ({"club": 5}, "must be an object"),
        ({"club": {"domains": ["club.example"], "rate": 1}}, "unknown key 'rate'"),
        ({"club": {"domains": "club.example"}}, "domains must be a list"),
        ({"club": {"domains": ["not a domain"]}}, "'not a domain' is not a domain"),
        ({"club": {"domains": ["club.example"], "rate_per_minute": -1}}, "rate_per_minute must be a number"),
        ({"club": {"domains": ["club.example"], "max_connections": 1.5}}, "max_connections must be a whole number"),
        ({"club": {"domains": ["gmail.com"]}}, "'gmail.com' is in two groups"),
        ({"default": None}, "cannot be removed"),
        ({"default": {"domains": ["a.example"]}}, "it lists none"),
    ],
)
def test_an_unusable_value_says_which_part_and_why(value, words):
    with pytest.raises(GroupsError, match=words):
        parse(value)
    assert words in destinations.problem(value)


def test_manage_check_names_the_setting(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"club": {"domains": ["gmail.com"]}}
    errors = [e.msg for e in checks.run_checks(tags=["dbmail"])]
    assert any(m.startswith("Setting DBMAIL_DESTINATION_GROUPS: 'gmail.com' is in two groups") for m in errors)


@pytest.mark.parametrize(
    "raw,words",
    [
        ('{"club": {"domains": ["gmail.com"]}}', "Setting DBMAIL_DESTINATION_GROUPS: 'gmail.com' is in two groups"),
        ('{"club": ', "Setting DBMAIL_DESTINATION_GROUPS is not valid JSON"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_setting(raw, words):
    result = run_manage("check", DBMAIL_DESTINATION_GROUPS=raw)
    assert result.returncode != 0
    assert words in result.stderr and "Traceback" not in result.stderr


def test_a_changed_setting_is_read_at_once(settings):
    settings.DBMAIL_DESTINATION_GROUPS = {"club": {"domains": ["club.example"], "rate_per_minute": 5}}
    assert destinations.group_of("x@club.example") == "club"
    settings.DBMAIL_DESTINATION_GROUPS = {}
    assert destinations.group_of("x@club.example") == "default"


@pytest.mark.django_db
def test_an_email_knows_its_group_from_the_start(settings):
    account = SenderAccountFactory()
    email = outbox.enqueue("Ann <ann@GMAIL.com>", "hi", "text", from_email=account.address)
    assert email.dest_group == "gmail"
    assert outbox.enqueue("bob@example.org", "hi", "text", from_email=account.address).dest_group == "default"
