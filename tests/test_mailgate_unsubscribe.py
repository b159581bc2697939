import pytest

from dbmail.models import Suppression
from mailgate.gate import receive as gate
from mailgate.models import InboundMessage

pytestmark = pytest.mark.django_db


def mail(subject, sender="ann@example.net", extra=""):
    return f"From: {sender}\r\nTo: unsubscribe@example.org\r\nSubject: {subject}\r\n{extra}\r\nplease\r\n".encode()


@pytest.fixture(autouse=True)
def mailto(settings):
    settings.DBMAIL_UNSUBSCRIBE_MAILTO = "unsubscribe@example.org"


def test_the_mailto_link_unsubscribes_its_sender():
    result = gate.run(mail("unsubscribe Ann@Example.net"), "Unsubscribe@example.org", "Ann@Example.net")
    assert result.code == 0
    row = Suppression.objects.get()
    assert (row.address, row.reason) == ("ann@example.net", "unsubscribed")
    assert "unsubscribed ann@example.net" in InboundMessage.objects.get().note


def test_nobody_can_unsubscribe_someone_else_by_mail():
    result = gate.run(
        mail("unsubscribe ann@example.net", "mallory@example.com"), "unsubscribe@example.org", "mallory@example.com"
    )
    assert result.code == 0
    assert not Suppression.objects.exists()
    assert "names ann@example.net but comes from mallory@example.com" in InboundMessage.objects.get().note


@pytest.mark.parametrize("sender, extra", [("", ""), ("ann@example.net", "Auto-Submitted: auto-replied\r\n")])
def test_automatic_mail_and_the_null_sender_change_nothing(sender, extra):
    assert gate.run(mail("unsubscribe", extra=extra), "unsubscribe@example.org", sender).code == 0
    assert not Suppression.objects.exists()
