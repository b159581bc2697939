"""Attack: a staff user who may only look at a page runs its actions.

Django offers an admin action to everyone who may see the change list unless
the action names the permissions it needs. Six pages had actions that change
things and named none, so a clerk with nothing but *view* permission could
approve held posts to a whole list (moderation bypassed), reject them,
resume a request the reputation guard paused, queue failed requests again,
process inbound mail again, apply unmatched tracking events, lift a
destination's slowdown, switch IMAP folders' polling and talk to a mail
server. Each action now needs the page's *change* permission (on read-only
pages the model's change permission, as the emails' actions already did).
"""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from dbmail.models import AuditEvent, MessageRequest, PacingBucket, TextOfEmail
from dbmail.send import backoff, buckets
from dbmail.track import guard
from mailgate.gate import receive as gate
from mailgate.models import EmailList, InboundMessage

from .factories import (
    EmailListFactory,
    MailAccountFactory,
    MailFolderFactory,
    MessageRequestFactory,
    UserFactory,
    mail_fixture,
)

pytestmark = pytest.mark.django_db
LIST = "physics@lists.example.org"

# (app, model, the actions that change something): every one of them in the admin.
ACTIONS = [
    ("dbmail", "messagerequest", {"cancel_requests", "queue_now", "retry_failed", "resume_paused"}),
    ("dbmail", "textofemail", {"cancel_emails", "retry_emails"}),
    ("dbmail", "dkimkey", {"retire_keys"}),
    ("dbmail", "unmatchedtrackingevent", {"apply_again"}),
    ("dbmail", "pacingbucket", {"lift_slowdown"}),
    ("mailgate", "inboundmessage", {"process_again"}),
    ("mailgate", "heldmessage", {"approve", "reject"}),
    ("mailgate", "mailaccount", {"discover_folders"}),
    ("mailgate", "mailfolder", {"enable", "disable"}),
]


def staff_with(*codenames, username="clerk"):
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def offered(client, app, model):
    response = client.get(reverse(f"admin:{app}_{model}_changelist"))
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered at all
    if form is None:
        return set()
    return {name for name, _ in form.fields["action"].choices if name}


@pytest.mark.parametrize(("app", "model", "actions"), ACTIONS, ids=[m for _, m, _ in ACTIONS])
def test_viewing_a_page_offers_none_of_its_actions_and_changing_it_offers_them_all(client, app, model, actions):
    client.force_login(staff_with(f"view_{model}"))
    assert offered(client, app, model) == set()
    client.force_login(staff_with(f"view_{model}", f"change_{model}", username="editor"))
    assert offered(client, app, model) == actions


@pytest.fixture
def held(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    ann = UserFactory(username="ann", email="ann@example.com")
    EmailListFactory(name="Physics", regex="physics", users=[ann], posting_policy=EmailList.Policy.MODERATED)
    return gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com").inbound_id


def test_a_viewer_cannot_approve_a_held_post(client, held):
    client.force_login(staff_with("view_heldmessage"))
    queue = reverse("admin:mailgate_heldmessage_changelist")
    client.post(queue, {"action": "approve", "_selected_action": [held]})
    client.post(queue, {"action": "reject", "_selected_action": [held]})
    assert InboundMessage.objects.get(pk=held).status == "held"
    assert not TextOfEmail.objects.exists()


def test_a_moderator_with_the_change_permission_still_approves(client, held):
    client.force_login(staff_with("view_heldmessage", "change_heldmessage", username="mod"))
    client.post(reverse("admin:mailgate_heldmessage_changelist"), {"action": "approve", "_selected_action": [held]})
    assert InboundMessage.objects.get(pk=held).status == "forwarded"
    assert TextOfEmail.objects.get().to_address == "ann@example.com"


def test_a_viewer_cannot_resume_a_paused_request_or_retry_a_failed_one(client):
    paused = MessageRequestFactory(status=MessageRequest.Status.EXPANDED)
    guard.pause(paused, "too many bounces")
    failed = MessageRequestFactory(status=MessageRequest.Status.FAILED, failure="broken set")
    client.force_login(staff_with("view_messagerequest"))
    url = reverse("admin:dbmail_messagerequest_changelist")
    client.post(url, {"action": "resume_paused", "_selected_action": [paused.pk]})
    client.post(url, {"action": "retry_failed", "_selected_action": [failed.pk]})
    assert MessageRequest.objects.get(pk=paused.pk).status == MessageRequest.Status.PAUSED
    assert MessageRequest.objects.get(pk=failed.pk).status == MessageRequest.Status.FAILED
    assert not AuditEvent.objects.filter(actor__username="clerk").exists()


def test_a_viewer_cannot_lift_a_slowdown(client):
    buckets.push_back("gmail", 600, "421 4.7.0 try later", timezone.now())
    client.force_login(staff_with("view_pacingbucket"))
    client.post(
        reverse("admin:dbmail_pacingbucket_changelist"), {"action": "lift_slowdown", "_selected_action": ["gmail"]}
    )
    assert backoff.is_slowed(PacingBucket.objects.get(name="gmail"), timezone.now())


def test_a_viewer_cannot_process_mail_again_or_switch_polling(client):
    inbound = InboundMessage.objects.create(envelope_recipient=LIST, raw=b"", size=0, status="raw")
    folder = MailFolderFactory(account=MailAccountFactory(), enabled=False)
    client.force_login(staff_with("view_inboundmessage", "view_mailfolder"))
    client.post(
        reverse("admin:mailgate_inboundmessage_changelist"),
        {"action": "process_again", "_selected_action": [inbound.pk]},
    )
    client.post(reverse("admin:mailgate_mailfolder_changelist"), {"action": "enable", "_selected_action": [folder.pk]})
    folder.refresh_from_db()
    assert not folder.enabled
    assert not AuditEvent.objects.filter(actor__username="clerk").exists()
