import ast

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from dbmail.models import DeliveryEvent, MessageRequest, SenderAccount, Suppression, TextOfEmail

from .conftest import ROOT
from .factories import MessageRequestFactory, SenderAccountFactory, TextOfEmailFactory

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status


def test_one_email_per_address_per_request_whatever_the_case():
    request = MessageRequestFactory()
    TextOfEmailFactory(request=request, to_address="Ann@example.org")
    with pytest.raises(IntegrityError):
        TextOfEmailFactory(request=request, to_address="ann@EXAMPLE.org")


def test_ad_hoc_emails_may_repeat_an_address():
    TextOfEmailFactory(to_address="ann@example.org")
    TextOfEmailFactory(to_address="ann@example.org")
    assert TextOfEmail.objects.count() == 2


def test_clean_checks_what_the_request_knows_by_itself():
    """A body and an active sender; the recipient set and templates are dbmail.content.validation's."""
    request = MessageRequestFactory.build(
        sender=SenderAccountFactory(), subject="{% if %}", text_body="", html_body="", recipient_set="nosuch"
    )
    with pytest.raises(ValidationError) as exc:
        request.full_clean()
    assert exc.value.message_dict == {"text_body": ["Write a text or an HTML body."]}


def test_the_models_import_no_logic():
    """dbmail.models depends on dbmail.states alone, so no import cycle runs through the models."""
    tree = ast.parse((ROOT / "dbmail" / "models.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {name for name in imported if name.split(".")[0] in ("dbmail", "mailgate", "mailsite")}
    assert ours == {"dbmail"}  # from dbmail import states
    names = {
        a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "dbmail"
        for a in node.names
    }
    assert names == {"states"}
    states = ast.parse((ROOT / "dbmail" / "states.py").read_text())
    assert not any(
        (node.module or "").startswith("dbmail") for node in ast.walk(states) if isinstance(node, ast.ImportFrom)
    )


def test_inactive_sender_is_refused():
    request = MessageRequestFactory.build(sender=SenderAccountFactory(active=False))
    with pytest.raises(ValidationError, match="not active"):
        request.full_clean()


def test_cancel_covers_waiting_emails_only():
    request = MessageRequestFactory(status="expanded")
    queued = TextOfEmailFactory(request=request)
    deferred = TextOfEmailFactory(request=request, status=Status.DEFERRED)
    sent = TextOfEmailFactory(request=request, status=Status.SENT)
    request.cancel()
    statuses = {e.pk: e.status for e in TextOfEmail.objects.all()}
    assert statuses == {queued.pk: Status.CANCELLED, deferred.pk: Status.CANCELLED, sent.pk: Status.SENT}
    assert MessageRequest.objects.get().status == MessageRequest.Status.CANCELLED


def test_retry_now_requeues_deferred_and_dropped_with_a_fresh_budget():
    dropped = TextOfEmailFactory(status=Status.DROPPED, attempts=100)
    deferred = TextOfEmailFactory(status=Status.DEFERRED, attempts=3)
    sent = TextOfEmailFactory(status=Status.SENT)
    assert TextOfEmail.retry_now(TextOfEmail.objects.all()) == 2
    for email in (dropped, deferred):
        email.refresh_from_db()
        assert (email.status, email.attempts) == (Status.QUEUED, 0)
        assert email.events.get().kind == DeliveryEvent.Kind.ADMIN
    sent.refresh_from_db()
    assert sent.status == Status.SENT


def test_suppression_is_stored_lowercase_and_unique():
    Suppression.objects.create(address=" Ann@Example.ORG ")
    assert Suppression.objects.get().address == "ann@example.org"
    with pytest.raises(IntegrityError):
        Suppression.objects.create(address="ANN@example.org")


def test_sender_account_with_own_server_gives_connection_overrides():
    plain = SenderAccount(address="a@example.org")
    own = SenderAccount(address="b@example.org", smtp_host="relay", smtp_username="u", smtp_password="p")
    assert plain.connection_overrides() == {}
    assert own.connection_overrides()["host"] == "relay" and own.connection_overrides()["port"] == 25
    with pytest.raises(ValidationError):
        SenderAccount(address="c@example.org", smtp_use_tls=True, smtp_use_ssl=True).full_clean()


def test_bodies_are_compressed_with_lz4_on_postgresql():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = 'dbmail_textofemail'::regclass "
            "AND attname IN ('text', 'html', 'raw_message') ORDER BY attname"
        )
        assert cursor.fetchall() == [("html", "l"), ("raw_message", "l"), ("text", "l")]


def test_deleting_a_user_keeps_their_emails_without_the_link():
    from .factories import UserFactory

    user = UserFactory(username="leaver")
    email = TextOfEmailFactory(user=user)
    user.delete()
    email.refresh_from_db()
    assert email.user_id is None and email.status == Status.QUEUED


def test_deleting_a_request_deletes_its_emails_and_their_log():
    """The log's email has no database constraint (migration 0021): Django's CASCADE deletes it."""
    request = MessageRequestFactory()
    email = TextOfEmailFactory(request=request)
    other = TextOfEmailFactory()
    for each in (email, other):
        DeliveryEvent.objects.create(email=each, kind="attempt", outcome=Status.SENT)
    request.delete()
    assert not TextOfEmail.objects.filter(pk=email.pk).exists()
    assert list(DeliveryEvent.objects.values_list("email_id", flat=True)) == [other.pk]
