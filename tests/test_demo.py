"""make run's demo data (dbmail.ops.demo, manage.py dbmail_demo): what README promises a newcomer."""

import io

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from dbmail.models import MessageRequest, SenderAccount, TextOfEmail

pytestmark = pytest.mark.django_db


def load(settings):
    settings.DEBUG = True
    out = io.StringIO()
    call_command("dbmail_demo", stdout=out)
    return out.getvalue().splitlines()


def test_the_demo_has_what_readme_says(settings, smtp_server):
    lines = load(settings)
    assert (
        lines[0] == "created superuser admin / admin"
        and lines[-1] == "created a request to the Students group, due now"
    )
    admin = authenticate(username="admin", password="admin")
    assert admin is not None and admin.is_superuser and admin.email
    users = get_user_model().objects.exclude(username="admin")
    assert {u.groups.get().name for u in users} == {"Teachers", "Students"}
    assert all(u.email and u.is_active for u in users)
    assert SenderAccount.objects.get().address == "office@example.org"
    mail = MessageRequest.objects.get()
    assert mail.status == MessageRequest.Status.QUEUED and mail.creator == admin
    # Due at once: one dbmail_cron run sends one email to each of the five students.
    call_command("dbmail_cron", stdout=io.StringIO(), stderr=io.StringIO())
    sent = TextOfEmail.objects.filter(request=mail)
    assert sent.count() == 5 and {e.status for e in sent} == {"sent"}
    assert sorted(r for m in smtp_server.received for r in m.rcpt_tos) == sorted(e.to_address for e in sent)


def test_loading_it_again_adds_nothing(settings):
    load(settings)
    assert load(settings) == []
    assert MessageRequest.objects.count() == 1 and get_user_model().objects.count() == 8


def test_it_runs_only_with_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only with DEBUG on"):
        call_command("dbmail_demo")
    assert not get_user_model().objects.exists()
