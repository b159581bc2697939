"""Helpers shared by the comm panel tests: users with and without the panel permission."""

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from .factories import UserFactory


def panel_user(username="editor", **kwargs):
    """A staff user holding dbmail.add_messagerequest, as a site would set one up."""
    user = UserFactory(username=username, is_staff=True, email=f"{username}@example.org", **kwargs)
    user.user_permissions.add(Permission.objects.get(codename="add_messagerequest", content_type__app_label="dbmail"))
    user.set_password("pw-for-tests")
    user.save()
    return user


@pytest.fixture
def editor(db):
    return panel_user()


@pytest.fixture
def panel(editor):
    client = Client()
    client.force_login(editor)
    return client
