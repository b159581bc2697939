import pytest
from django.core.exceptions import ValidationError

from dbmail.models import Suppression
from mailgate.gate import routing
from mailgate.models import EmailList

from .factories import EmailListFactory, GroupFactory, UserFactory

pytestmark = pytest.mark.django_db


@routing.list_resolver("test_class", label="A class (tests)")
def _class_members(match, email_list):
    code = match.group("code")
    return [
        f"{code}-teacher@example.org",
        {"email": f"{code}-rep@example.org", "name": "Rep"},
        *UserFactory._meta.model.objects.filter(username__startswith=code),
    ]


def addresses(route):
    return [m.address for m in route.members]


def test_lists_are_tried_in_seq_order_and_the_regex_must_match_whole():
    EmailListFactory(name="Catch-all", regex=r".*", seq=90, addresses="desk@example.org")
    EmailListFactory(name="Physics", regex="physics", seq=10, addresses="p@example.org")
    assert routing.route("physics@lists.example.org").email_list.name == "Physics"
    assert routing.route("PHYSICS@Lists.Example.org").email_list.name == "Physics"
    assert routing.route("physics-extra@lists.example.org").email_list.name == "Catch-all"


def test_inactive_lists_and_no_match():
    EmailListFactory(regex="physics", active=False)
    assert routing.route("physics@lists.example.org") is None


def test_members_are_users_groups_addresses_and_archive_each_once():
    teachers = GroupFactory(name="Teachers")
    ann = UserFactory(username="ann", email="ann@example.com", groups=[teachers])
    UserFactory(username="old", email="old@example.com", is_active=False, groups=[teachers])
    UserFactory(username="noaddr", email="", groups=[teachers])
    bob = UserFactory(username="bob", email="bob@example.net")
    Suppression.objects.create(address="gone@example.org", reason="bounced")
    EmailListFactory(
        regex="staff",
        users=[bob, ann],
        groups=[teachers],
        addresses="Desk <desk@example.org>\nANN@example.com\ngone@example.org\n",
        archive_address="archive@example.org",
    )
    route = routing.route("staff@example.org")
    assert addresses(route) == ["ann@example.com", "bob@example.net", "desk@example.org", "archive@example.org"]
    assert route.is_member("Bob@Example.net") and not route.is_member("gone@example.org")


def test_resolver_gets_named_groups():
    UserFactory(username="7b-kim", email="kim@example.com")
    EmailListFactory(regex=r"(?P<code>\w+)-students", resolver="test_class")
    route = routing.route("7b-students@school.example")
    assert route.groups == {"code": "7b"} and route.args == ("7b",)
    assert addresses(route) == ["7b-teacher@example.org", "7b-rep@example.org", "kim@example.com"]


def test_user_resolver_and_full_address_matching():
    UserFactory(username="ann", email="ann.smith@home.example")
    EmailListFactory(regex=r"(?P<user>[a-z]+)@people\.example\.org", match_full_address=True, resolver="user")
    assert addresses(routing.route("Ann@people.example.org")) == ["ann.smith@home.example"]
    assert routing.route("ann@other.example.org") is None
    assert routing.route("nobody@people.example.org") is None  # an unknown user is no address at all


def test_the_user_resolver_knows_no_inactive_user():
    UserFactory(username="gone", is_active=False)
    EmailListFactory(regex=r"u-(?P<user>[a-z]+)", resolver="user")
    assert routing.route("u-gone@lists.example.org") is None


@routing.list_resolver("nobody_yet", label="A class with no students yet (tests)")
def _nobody_yet(match, email_list):
    return []


def test_a_resolver_that_finds_no_members_still_routes():
    EmailListFactory(regex="new-class", resolver="nobody_yet")
    route = routing.route("new-class@lists.example.org")
    assert route is not None and route.members == []


def test_validation_names_the_bad_field():
    with pytest.raises(ValidationError) as bad_regex:
        EmailList(name="x", regex="(unclosed").clean()
    assert "regex" in bad_regex.value.message_dict
    with pytest.raises(ValidationError) as bad_resolver:
        EmailList(name="x", regex="x", resolver="nope").clean()
    assert "No resolver named 'nope'" in str(bad_resolver.value)
    with pytest.raises(ValidationError) as bad_address:
        EmailList(name="x", regex="x", addresses="not-an-address").clean()
    assert "addresses" in bad_address.value.message_dict


def test_the_built_in_and_registered_resolvers_pass_validation():
    for name in ("user", "test_class"):
        EmailList(name="x", regex="x", resolver=name).clean()


def test_the_models_import_no_logic():
    """mailgate/models.py checks resolver names against the registry, never importing the routing (or other) logic."""
    import ast
    from pathlib import Path

    from .conftest import ROOT

    tree = ast.parse(Path(ROOT / "mailgate" / "models.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {name for name in imported if name.split(".")[0] in ("dbmail", "mailgate")}
    # `from mailgate import resolvers` (the registry only) and the settings table; nothing from gate/ or mailboxes/.
    assert ours == {"mailgate", "mailgate.conf"}
    assert "from mailgate import resolvers\n" in Path(ROOT / "mailgate" / "models.py").read_text()


def test_a_broken_saved_pattern_matches_nothing():
    EmailListFactory(regex="(broken", seq=1)
    EmailListFactory(name="Next", regex="physics", seq=2)
    assert routing.route("physics@example.org").email_list.name == "Next"
