"""Lifting a suppression, every way there is, by every role: docs/admins.md, "What a suppression stops".

A hard bounce, a complaint or an unsubscribe is lifted only by holders of *Can delete
suppression* (superusers have it); a manual block by any comm panel user. Lifting is removing
the row, or changing its address or reason; each lift leaves an audit event naming who.
"""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from dbmail.content import lifting
from dbmail.models import AuditEvent, Suppression

from .factories import UserFactory
from .panel import panel_user

pytestmark = pytest.mark.django_db

Reason = Suppression.Reason
PROTECTED = [Reason.BOUNCED, Reason.COMPLAINED, Reason.UNSUBSCRIBED]
ADDRESS = "gone@example.net"


def _grant(user, *codenames):
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="dbmail", codename__in=codenames))


def _client(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def composer():
    """A comm panel user who may also view and change suppressions in the admin, but not delete them."""
    user = panel_user("composer")
    _grant(user, "view_suppression", "change_suppression")
    return user


@pytest.fixture
def deleter():
    user = panel_user("deleter")
    _grant(user, "view_suppression", "change_suppression", "delete_suppression")
    return user


@pytest.fixture
def superuser():
    return UserFactory(username="root", is_staff=True, is_superuser=True)


def _row(reason):
    return Suppression.objects.create(address=ADDRESS, reason=reason, note="from the MTA")


def _lift_events(row):
    return list(
        AuditEvent.objects.filter(target_type="dbmail.suppression", target_id=str(row.pk)).values_list(
            "actor_name", "action"
        )
    )


# Each way to lift: (name, function(client, row) -> response).
def panel_remove(client, row):
    return client.post(reverse("commpanel:suppression_delete", args=[row.pk]))


def panel_edit_reason(client, row):
    data = {"address": row.address, "reason": Reason.MANUAL if row.reason != Reason.MANUAL else "unsubscribed"}
    return client.post(reverse("commpanel:suppression_edit", args=[row.pk]), {**data, "note": "edited"})


def panel_edit_address(client, row):
    data = {"address": "other@example.net", "reason": row.reason, "note": "edited"}
    return client.post(reverse("commpanel:suppression_edit", args=[row.pk]), data)


def admin_delete(client, row):
    return client.post(reverse("admin:dbmail_suppression_delete", args=[row.pk]), {"post": "yes"})


def admin_bulk_delete(client, row):
    data = {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
    return client.post(reverse("admin:dbmail_suppression_changelist"), data)


def admin_change(client, row):
    data = {"address": "other@example.net", "reason": Reason.MANUAL, "note": "edited"}
    data.update({"created_at_0": "2026-11-30", "created_at_1": "10:00:00"})
    return client.post(reverse("admin:dbmail_suppression_change", args=[row.pk]), data)


WAYS = [panel_remove, panel_edit_reason, panel_edit_address, admin_delete, admin_bulk_delete, admin_change]


def _lifted(row):
    """Whether the row no longer suppresses its address as it did: gone, or its address or reason changed."""
    now = Suppression.objects.filter(pk=row.pk).values("address", "reason").first()
    return now is None or (now["address"], now["reason"]) != (row.address, row.reason)


@pytest.mark.parametrize("way", WAYS, ids=lambda w: w.__name__)
@pytest.mark.parametrize("reason", PROTECTED)
def test_a_composer_cannot_lift_a_bounce_complaint_or_unsubscribe(composer, way, reason):
    row = _row(reason)
    response = way(_client(composer), row)
    assert not _lifted(row), (way.__name__, reason)
    assert response.status_code in (200, 302, 403)
    assert not [e for e in _lift_events(row) if "unsuppress" in e[1]]


def test_the_panel_says_why_and_offers_no_remove_button(composer):
    row = _row(Reason.BOUNCED)
    client = _client(composer)
    response = panel_remove(client, row)
    assert response.status_code == 403
    assert "only an admin with the permission “Can delete suppression”" in response.content.decode()
    listing = client.get(reverse("commpanel:suppressions")).content.decode()
    assert reverse("commpanel:suppression_delete", args=[row.pk]) not in listing
    # In words on the page, not only in a tooltip a phone never shows.
    assert "Removed by an admin only" in listing
    assert 'id="lift-rule"' in listing and "only an admin may remove" in listing
    # The edit page still takes a note: only the fields that would lift it are fixed.
    client.post(reverse("commpanel:suppression_edit", args=[row.pk]), {"note": "asked to be mailed again"})
    row.refresh_from_db()
    assert (row.reason, row.note) == (Reason.BOUNCED, "asked to be mailed again")


@pytest.mark.parametrize("way", [panel_remove, panel_edit_reason, panel_edit_address], ids=lambda w: w.__name__)
def test_a_composer_lifts_a_manual_block_in_the_panel(composer, way):
    row = _row(Reason.MANUAL)
    way(_client(composer), row)
    assert _lifted(row)
    assert any(who == "composer" for who, _ in _lift_events(row))


@pytest.mark.parametrize("who", ["deleter", "superuser"])
@pytest.mark.parametrize("way", WAYS, ids=lambda w: w.__name__)
@pytest.mark.parametrize("reason", PROTECTED)
def test_holders_of_the_delete_permission_lift_anything_and_the_history_says_who(request, who, way, reason):
    user = request.getfixturevalue(who)
    row = _row(reason)
    response = way(_client(user), row)
    assert response.status_code == 302, getattr(response, "context_data", {}).get("errors")
    assert _lifted(row)
    events = _lift_events(row)
    assert events and all(name == user.username for name, _ in events)
    if way in (panel_remove, admin_delete, admin_bulk_delete):
        assert [a for _, a in events] == ["unsuppress" if way is panel_remove else "unsuppress (admin)"]
        assert AuditEvent.objects.get(target_id=str(row.pk)).detail == f"was {reason}: from the MTA"


def test_the_history_of_a_lift_cannot_be_rewritten(deleter):
    row = _row(Reason.COMPLAINED)
    panel_remove(_client(deleter), row)
    event = AuditEvent.objects.get(target_type="dbmail.suppression", target_id=str(row.pk))
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_rule_is_the_permission():
    assert lifting.PERMISSION == "dbmail.delete_suppression"
