"""The built-in destination groups' limits: changed or switched off in the settings, or in the admin for every host."""

import pytest
from django.urls import reverse

from dbmail.models import AuditEvent, DestinationLimit, TextOfEmail
from dbmail.send import claims, destinations, limits, pacing

from .factories import UserFactory
from .test_pacing import Clock, domains, queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.fixture(autouse=True)
def no_throttle(settings):
    settings.DBMAIL_THROTTLE_PER_SECOND = 0


def test_every_deployment_gets_the_built_in_limits():
    groups = pacing.Pacer().groups
    assert (groups["gmail"].rate_per_minute, groups["gmail"].max_connections) == (600, 10)
    assert (groups["microsoft"].rate_per_minute, groups["yahoo"].rate_per_minute) == (300, 300)
    queue("gmail.com", 700)
    assert domains(claims.claim(1000, pacer=pacing.Pacer(clock=Clock()))) == {"gmail.com": 600}


@pytest.mark.parametrize(
    "setting, taken",
    [
        ({"gmail": {"rate_per_minute": 100}}, 100),  # changed
        ({"gmail": {"rate_per_minute": 0, "max_connections": 0}}, 700),  # switched off
        ({"gmail": None}, 700),  # no gmail group at all: its domains are the default group's
    ],
)
def test_the_settings_change_or_switch_off_a_built_in_group(settings, setting, taken):
    settings.DBMAIL_DESTINATION_GROUPS = setting
    queue("gmail.com", 700, classified=False)
    assert len(claims.claim(1000, pacer=pacing.Pacer(clock=Clock())).emails) == taken


def test_the_admin_changes_a_groups_rate_for_the_next_claims_and_records_who(admin_client):
    response = admin_client.post(
        reverse("admin:dbmail_destinationlimit_add"),
        {"group": "gmail", "rate_per_minute": "50", "max_connections": "", "note": "their postmaster asked"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    groups = pacing.Pacer().groups
    assert (groups["gmail"].rate_per_minute, groups["gmail"].max_connections) == (50, 10)  # empty: the settings'
    queue("gmail.com", 100)
    assert domains(claims.claim(1000, pacer=pacing.Pacer(clock=Clock()))) == {"gmail.com": 50}
    assert AuditEvent.objects.filter(action="add (admin)", target_type="dbmail.destinationlimit").exists()
    listing = admin_client.get(reverse("admin:dbmail_destinationlimit_changelist")).content.decode()
    assert "600 a minute, 10 connections" in listing and "50 a minute, 10 connections" in listing


def test_the_admin_switches_a_groups_limits_off_and_deleting_the_row_brings_the_settings_back(admin_client):
    admin_client.post(
        reverse("admin:dbmail_destinationlimit_add"), {"group": "yahoo", "rate_per_minute": "0", "max_connections": "0"}
    )
    groups = pacing.Pacer().groups
    assert (groups["yahoo"].rate_per_minute, groups["yahoo"].max_connections) == (0, 0)
    queue("yahoo.com", 400)
    assert len(claims.claim(1000, pacer=pacing.Pacer(clock=Clock())).emails) == 400
    admin_client.post(reverse("admin:dbmail_destinationlimit_delete", args=["yahoo"]), {"post": "yes"})
    assert not DestinationLimit.objects.exists()
    assert pacing.Pacer().groups["yahoo"].rate_per_minute == 300


@pytest.mark.parametrize(
    "data, error",
    [
        ({"group": "gmail", "rate_per_minute": "-1"}, "A rate is 0 or more"),
        ({"group": "gmail", "max_connections": "5000"}, "1000"),
        ({"group": "club"}, "Select a valid choice"),  # not a group of the settings
    ],
)
def test_the_admin_refuses_what_cannot_be_a_limit(admin_client, data, error):
    response = admin_client.post(reverse("admin:dbmail_destinationlimit_add"), {"note": "", **data})
    assert response.status_code == 200 and error in response.content.decode()
    assert not DestinationLimit.objects.exists()


def test_other_processes_see_a_change_within_seconds_and_a_row_for_a_removed_group_changes_nothing(
    monkeypatch, settings
):
    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    assert limits.in_force()["gmail"].rate_per_minute == 600
    DestinationLimit.objects.create(group="gmail", rate_per_minute=120)  # another host's admin: no forget() here
    assert limits.in_force()["gmail"].rate_per_minute == 600  # read a moment ago
    now[0] += DestinationLimit.REFRESH_SECONDS
    assert limits.in_force()["gmail"].rate_per_minute == 120
    settings.DBMAIL_DESTINATION_GROUPS = {"gmail": None}
    assert "gmail" not in limits.in_force().by_name
    assert limits.in_force().of("x@gmail.com") == destinations.DEFAULT
    assert not TextOfEmail.objects.exists()
