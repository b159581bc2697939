import pytest

from dbmail.sending import send_due

from .factories import TextOfEmailFactory


@pytest.mark.django_db
def test_queued_email_arrives_over_smtp(smtp_server):
    email = TextOfEmailFactory()
    result = send_due()
    assert result.sent == 1
    assert [m.message_id for m in smtp_server.received] == [email.message_id]
