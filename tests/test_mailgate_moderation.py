import pytest

from dbmail.models import TextOfEmail
from mailgate.gate import moderation
from mailgate.gate import receive as gate
from mailgate.models import EmailList, InboundMessage

from .factories import EmailListFactory, UserFactory, mail_fixture

LIST = "physics@lists.example.org"


@pytest.fixture
def moderated(db, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    ann = UserFactory(username="ann", email="ann@example.com")
    bob = UserFactory(username="bob", email="bob@example.net")
    return EmailListFactory(
        name="Physics", regex="physics", users=[ann, bob], posting_policy=EmailList.Policy.MODERATED
    )


@pytest.fixture
def held(moderated):
    result = gate.run(mail_fixture("plain.eml"), LIST, "ann@example.com")
    assert result.code == 0 and "held" in result.message
    inbound = InboundMessage.objects.get(pk=result.inbound_id)
    assert inbound.status == "held"
    assert not TextOfEmail.objects.exists()
    return inbound


@pytest.fixture
def moderator(db):
    return UserFactory(username="mod", email="mod@example.org", is_staff=True)


def test_approve_forwards_to_the_members(held, moderator):
    assert moderation.approve(held, moderator) == 2
    held.refresh_from_db()
    assert (held.status, held.decided_by, held.forwarded_count) == ("forwarded", moderator, 2)
    assert held.decided_at is not None
    assert sorted(TextOfEmail.objects.values_list("to_address", flat=True)) == ["ann@example.com", "bob@example.net"]


def test_reject_notifies_the_sender(held, moderator):
    notice = moderation.reject(held, moderator, "Off topic.")
    held.refresh_from_db()
    assert (held.status, held.decided_by) == ("rejected", moderator)
    assert notice.to_address == "ann@example.com"
    assert "declined your message" in notice.text and "Off topic." in notice.text
    assert TextOfEmail.objects.count() == 1


def test_a_message_is_decided_once(held, moderator):
    moderation.approve(held, moderator)
    with pytest.raises(moderation.NotHeld):
        moderation.reject(held, moderator)
    with pytest.raises(moderation.NotHeld):
        moderation.approve(held, moderator)
    assert TextOfEmail.objects.count() == 2
