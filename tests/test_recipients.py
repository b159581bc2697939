import pytest

from dbmail.content import recipients
from dbmail.models import Suppression

from .factories import GroupFactory, UserFactory

pytestmark = pytest.mark.django_db


def flatten(name, params, **kwargs):
    return [r for _, chunk in recipients.iter_recipients(name, params, **kwargs) for r in chunk]


def test_a_site_registers_its_own_set_with_one_decorator():
    @recipient_set_named("vip_for_test")
    def vip(params):
        return [{"email": f"vip{i}@example.org", "tier": params["tier"]} for i in range(3)]

    rows = flatten("vip_for_test", {"tier": "gold"})
    assert [r.email for r in rows] == ["vip0@example.org", "vip1@example.org", "vip2@example.org"]
    assert rows[0].variables == {"tier": "gold"}
    assert "vip_for_test" in {s.name for s in recipients.registered_sets()}


def recipient_set_named(name):
    return recipients.recipient_set(name, label=name)


def test_unknown_set_is_a_clear_error():
    with pytest.raises(recipients.UnknownRecipientSet, match="nosuch"):
        flatten("nosuch", {})


def test_staff_and_groups():
    group = GroupFactory(name="Physics")
    UserFactory(username="boss", is_staff=True)
    UserFactory(username="p1", groups=[group])
    UserFactory(username="p2", groups=[group, GroupFactory(name="Chem")])
    assert [r.username for r in flatten("staff", {})] == ["boss"]
    assert sorted(r.username for r in flatten("groups", {"groups": ["Physics", "Chem"]})) == ["p1", "p2"]


def test_positions_resume_past_a_checkpoint():
    users = UserFactory.create_batch(5)
    chunks = list(recipients.iter_recipients("all_active", {}, chunk_size=2))
    assert [len(c) for _, c in chunks] == [2, 2, 1]
    assert [len(c) for _, c in recipients.iter_recipients("all_active", {}, chunk_size=2, first_chunk_size=1)] == [
        1,
        2,
        2,
    ]
    first_end = chunks[0][0]
    rest = flatten("all_active", {}, after=first_end)
    assert [r.user_id for r in rest] == [u.pk for u in users[2:]]
    rows = {"rows": ["a@x.org", "b@x.org", "c@x.org"]}
    assert [r.email for r in flatten("addresses", rows, after=0)] == ["b@x.org", "c@x.org"]


def test_count_is_distinct_deliverable_addresses():
    UserFactory(username="a")
    UserFactory(username="b", email="A@example.org")
    UserFactory(username="c")
    UserFactory(username="d", email="broken")
    Suppression.objects.create(address="c@example.org")
    assert recipients.count("all_active", {}) == 1


def test_normalise_lowercases_only_the_domain():
    assert recipients.normalise_address("  Ann.Smith@EXAMPLE.Org ") == "Ann.Smith@example.org"


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("groups", {"groups": 5}, '"groups" must be a list of group names, not 5'),
        ("groups", {"groups": [1, 2]}, "must be a list of group names"),
        ("addresses", {"rows": "a@example.org"}, '"rows" must be a list'),
        ("all_active", ["not", "an", "object"], "must be a JSON object, not ['not', 'an', 'object']"),
    ],
)
def test_parameters_a_set_cannot_use_are_an_error_in_words(name, params, words):
    with pytest.raises(recipients.RecipientSetError) as raised:
        flatten(name, params)
    assert words in str(raised.value) and name in str(raised.value)


def test_a_set_that_raises_says_so_when_called_or_part_way():
    @recipient_set_named("raises_for_test")
    def raises(params):
        raise LookupError("no such class")

    @recipient_set_named("stops_for_test")
    def stops(params):
        yield {"email": "first@example.org"}
        raise OSError("directory gone")

    @recipient_set_named("none_for_test")
    def nothing(params):
        return None

    with pytest.raises(recipients.RecipientSetError, match="'raises_for_test' failed .*LookupError: no such class"):
        flatten("raises_for_test", {})
    chunks = recipients.iter_recipients("stops_for_test", {}, chunk_size=1)
    assert [r.email for r in next(chunks)[1]] == ["first@example.org"]  # what came before the error is usable
    with pytest.raises(recipients.RecipientSetError, match="OSError: directory gone"):
        next(chunks)
    with pytest.raises(recipients.RecipientSetError, match="TypeError"):
        flatten("none_for_test", {})


def test_a_row_that_is_not_a_mapping_is_one_dropped_recipient():
    rows = flatten("addresses", {"rows": ["ok@example.org", 42, {"email": "b@example.org"}]})
    assert [(r.email, r.error) for r in rows] == [
        ("ok@example.org", ""),
        ("42", "not a recipient row: 42"),
        ("b@example.org", ""),
    ]
