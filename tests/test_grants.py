"""Send grants: an address or a whole domain, to a user or a group; nothing implicit."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from dbmail.intake import grants
from dbmail.models import SendGrant

from .factories import GroupFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann():
    return UserFactory(username="ann")


def test_an_address_grant_covers_that_address_only(ann):
    SendGrant.objects.create(address=" Desk@Example.ORG ", user=ann)
    assert SendGrant.objects.get().address == "desk@example.org"
    assert grants.may_send_as(ann, "DESK@example.org")
    assert not grants.may_send_as(ann, "ceo@example.org")
    assert not grants.may_send_as(UserFactory(username="bob"), "desk@example.org")


def test_a_domain_grant_to_a_group_covers_the_domain_not_its_subdomains(ann):
    office = GroupFactory(name="office")
    SendGrant.objects.create(address="@example.org", group=office)
    assert not grants.may_send_as(ann, "x@example.org")
    ann.groups.add(office)
    assert grants.may_send_as(ann, "x@example.org")
    assert not grants.may_send_as(ann, "x@sub.example.org") and not grants.may_send_as(ann, "x@example.org.evil")
    assert [g.address for g in grants.grants_of(ann)] == ["@example.org"]


def test_no_grant_for_inactive_users_or_nobody_and_none_implicit_for_superusers(ann):
    SendGrant.objects.create(address="desk@example.org", user=ann)
    ann.is_active = False
    assert not grants.may_send_as(ann, "desk@example.org")
    assert not grants.may_send_as(None, "desk@example.org")
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    assert not grants.may_send_as(root, "desk@example.org")


@pytest.mark.parametrize("address", ["example.org", "@", "ann@", "a b@example.org", "@example", "<a@example.org>"])
def test_validation_names_the_address(ann, address):
    with pytest.raises(ValidationError) as error:
        SendGrant(address=address, user=ann).clean()
    assert "address" in error.value.message_dict


def test_a_grant_is_to_a_user_or_a_group_never_both_or_neither(ann):
    with pytest.raises(ValidationError) as error:
        SendGrant(address="@example.org").clean()
    assert "user" in error.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        SendGrant.objects.create(address="@example.org", user=ann, group=GroupFactory(name="g"))
