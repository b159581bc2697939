"""Helpers shared by the sending API tests: users who may send, and API clients holding their tokens."""

from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from .factories import UserFactory


def composer(username, staff=False, **kwargs):
    """A user holding dbmail.add_messagerequest (not staff unless asked: they see only their own requests)."""
    user = UserFactory(username=username, is_staff=staff, email=f"{username}@example.org", **kwargs)
    user.user_permissions.add(Permission.objects.get(codename="add_messagerequest", content_type__app_label="dbmail"))
    return user


def client_for(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client
