"""Attack: guessing a password through POST /api/v1/token/ as fast as the web workers answer.

The token endpoint checks a password on every call and had no limit (the
sending API's rate counts only calls that send), so a script could try a
password list against one user without pause. DBMAIL_API_LOGIN_RATE now counts
every attempt per username in the database (all processes and hosts share the
count); past it, 429 with Retry-After, even for the right password, until the
window ends. Other usernames are not held up by it.
"""

import pytest
from rest_framework.test import APIClient

from dbmail.intake.api import throttling

from .factories import UserFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/token/"


@pytest.fixture
def ann(settings):
    settings.DBMAIL_API_LOGIN_RATE = "5/min"
    user = UserFactory(username="ann")
    user.set_password("right-password")
    user.save()
    return user


def attempt(username, password):
    return APIClient().post(URL, {"username": username, "password": password}, format="json")


def test_guessing_one_users_password_is_stopped_after_the_limit(ann, monkeypatch):
    monkeypatch.setattr(throttling.time, "time", lambda: 600.5)  # inside one minute window
    answers = [attempt("ann", f"guess-{n}").status_code for n in range(5)]
    assert answers == [400] * 5
    refused = attempt("ann", "right-password")
    assert refused.status_code == 429 and refused["Retry-After"] == "60"
    assert "token" not in refused.json()
    assert attempt("ANN ", "guess").status_code == 429  # the same user, however the name is written
    assert attempt("bob", "guess").status_code == 400  # another user is not held up


def test_the_next_window_lets_the_owner_in(ann, monkeypatch):
    now = [600.5]
    monkeypatch.setattr(throttling.time, "time", lambda: now[0])
    for n in range(6):
        attempt("ann", f"guess-{n}")
    assert attempt("ann", "right-password").status_code == 429
    now[0] = 660.5
    answer = attempt("ann", "right-password")
    assert answer.status_code == 200 and answer.json()["token"]


def test_off_counts_nothing(ann, settings):
    settings.DBMAIL_API_LOGIN_RATE = "off"
    assert {attempt("ann", f"guess-{n}").status_code for n in range(8)} == {400}
    assert attempt("ann", "right-password").status_code == 200
