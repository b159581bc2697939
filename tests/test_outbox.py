import pytest
from django.db import transaction
from hypothesis import given
from hypothesis import strategies as st

from dbmail.intake import outbox
from dbmail.models import TextOfEmail

from .conftest import fuzz_settings
from .factories import SenderAccountFactory

pytestmark = pytest.mark.django_db(transaction=True)
Status = TextOfEmail.Status


def test_send_now_sends_at_once_through_the_outbox(smtp_server):
    email = outbox.send_now(to="Ann <ann@example.net>", subject="Code\n 1234", text="Your code")
    assert email.status == Status.SENT and email.attempts == 1
    (got,) = smtp_server.received
    assert got.message_id == email.message_id and got.message["Subject"] == "Code 1234"
    assert got.message["To"] == "Ann <ann@example.net>"
    assert email.events.get().smtp_code == 250


def test_send_now_waits_for_the_callers_commit(smtp_server):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            outbox.send_now(to="a@example.net", subject="rolled back", text="x")
            raise RuntimeError("the view failed")
    with transaction.atomic():
        email = outbox.send_now(to="b@example.net", subject="kept", text="x")
        assert smtp_server.received == []  # not before the commit
    assert [m.rcpt_tos for m in smtp_server.received] == [["b@example.net"]]
    email.refresh_from_db()
    assert email.status == Status.SENT
    assert not TextOfEmail.objects.filter(subject="rolled back").exists()


def test_server_down_leaves_it_queued_for_cron(settings):
    settings.EMAIL_BACKEND = "dbmail.backends.SMTPBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 1
    email = outbox.send_now(to="a@example.net", subject="s", text="t")
    assert (email.status, email.attempts) == (Status.QUEUED, 0)
    assert "cannot connect" in email.events.get().text


def test_sender_must_be_configured():
    SenderAccountFactory(address="club@example.org", display_name="Club")
    assert (
        outbox.enqueue("a@example.net", "s", "t", from_email="club@example.org").from_header
        == "Club <club@example.org>"
    )
    assert outbox.enqueue("a@example.net", "s", "t").account is None  # DEFAULT_FROM_EMAIL
    with pytest.raises(outbox.UnknownSender):
        outbox.enqueue("a@example.net", "s", "t", from_email="stranger@example.com")


def test_bad_recipient_is_recorded_as_dropped_not_lost():
    email = outbox.enqueue("not an address", "s", "t")
    assert email.status == Status.DROPPED and "invalid address" in email.last_error
    assert email.events.count() == 1


def test_html_only_gets_text_and_send_at_schedules():
    from datetime import timedelta

    from django.utils import timezone

    later = timezone.now() + timedelta(hours=2)
    email = outbox.enqueue("a@example.net", "s", html="<p>Hello <b>you</b></p>", send_at=later)
    assert email.text == "Hello you\n" and email.next_attempt_at == later


def test_send_after_commit_sends_the_callers_emails_once_committed(smtp_server):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            outbox.send_after_commit([outbox.enqueue("a@example.net", "rolled back", "x")])
            raise RuntimeError("the caller failed")
    with transaction.atomic():
        emails = [outbox.enqueue(f"{n}@example.net", "kept", "x") for n in "bc"]
        outbox.send_after_commit(emails)
        assert smtp_server.received == []
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == ["b@example.net", "c@example.net"]
    assert {e.status for e in emails} == {Status.SENT}  # refreshed in place


def test_send_at_once_sends_queued_emails_and_leaves_the_others(smtp_server):
    dropped = outbox.enqueue("not an address", "s", "t")
    queued = outbox.enqueue("a@example.net", "s", "t")
    assert outbox.send_at_once([dropped, queued]) == [dropped, queued]
    assert [m.rcpt_tos for m in smtp_server.received] == [["a@example.net"]]
    assert (queued.status, dropped.status) == (Status.SENT, Status.DROPPED)


def test_the_sites_own_addresses_are_its_from_and_server_addresses(settings):
    settings.DEFAULT_FROM_EMAIL, settings.SERVER_EMAIL = "Site <NoReply@Example.org>", "root@example.org"
    assert outbox.site_addresses() == {"noreply@example.org", "root@example.org"}
    assert outbox.enqueue("a@example.net", "s", "t", from_email="ROOT@example.org").account is None


@fuzz_settings(300)
@given(st.from_regex(r"\A[A-Za-z0-9!#$%&'*+/=?^_`{|}~. <>\"(),:;@\[\]\\-]{1,14}@[A-Za-z0-9. <>()-]{1,14}\Z"))
def test_the_quick_address_split_is_parseaddrs(text):
    from email.utils import parseaddr

    from dbmail.intake.outbox import _parseaddr

    assert _parseaddr(text) == parseaddr(text)


def test_a_sender_seen_before_is_checked_again_by_every_call(settings):
    # enqueue keeps each sender it has seen as a guess, checked inside its INSERT: every change to
    # the account (or to the site's addresses) must show at the very next call, in this process too.
    from dbmail.models import SenderAccount, Suppression

    account = SenderAccountFactory(address="club@example.org", display_name="Club")
    first = outbox.enqueue("a@example.net", "s", "t", from_email="club@example.org")
    assert (first.account_id, first.from_header, first.status) == (account.pk, "Club <club@example.org>", Status.QUEUED)

    SenderAccount.objects.filter(pk=account.pk).update(display_name="The Club")
    assert outbox.enqueue("a@example.net", "s", "t", from_email="club@example.org").from_header == (
        "The Club <club@example.org>"
    )

    Suppression.objects.create(address="b@example.net", reason=Suppression.Reason.BOUNCED)
    dropped = outbox.enqueue("B@example.net", "s", "t", from_email="club@example.org")
    assert dropped.status == Status.DROPPED and dropped.last_error.startswith("suppressed: hard bounce")
    assert dropped.events.count() == 1

    SenderAccount.objects.filter(pk=account.pk).update(active=False)
    with pytest.raises(outbox.UnknownSender):
        outbox.enqueue("a@example.net", "s", "t", from_email="club@example.org")
    assert TextOfEmail.objects.count() == 3  # nothing written by the refused call

    # An account replaced by another of the same address: the new one sends, not the guessed id.
    SenderAccount.objects.filter(pk=account.pk).update(address="old-club@example.org", active=True)
    other = SenderAccountFactory(address="club@example.org", display_name="Club")
    assert outbox.enqueue("a@example.net", "s", "t", from_email="club@example.org").account_id == other.pk

    # A refused address is inserted without the checked statement: the guess is asked again for it too.
    SenderAccount.objects.filter(pk=other.pk).update(address="older-club@example.org")
    newest = SenderAccountFactory(address="club@example.org", display_name="Club")
    refused = outbox.enqueue("user@[127.0.0.1]", "s", "t", from_email="club@example.org")
    assert (refused.status, refused.account_id) == (Status.DROPPED, newest.pk)
    assert outbox.enqueue("not an address", "s", "t", from_email="club@example.org").account_id == newest.pk

    # A site address that gains an account sends as that account; one that stops being the site's is refused.
    settings.DEFAULT_FROM_EMAIL = "noreply@example.org"
    assert outbox.enqueue("a@example.net", "s", "t").account is None
    own = SenderAccountFactory(address="noreply@example.org", display_name="No Reply")
    assert outbox.enqueue("a@example.net", "s", "t").account == own
    settings.SERVER_EMAIL = "root@example.org"
    assert outbox.enqueue("a@example.net", "s", "t", from_email="root@example.org").account is None
    settings.SERVER_EMAIL = "admin@example.org"
    with pytest.raises(outbox.UnknownSender):
        outbox.enqueue("a@example.net", "s", "t", from_email="root@example.org")


def test_a_checked_insert_inside_the_callers_transaction_leaves_it_usable():
    # A failed check writes nothing and raises nothing inside the caller's transaction: the
    # retry with the fresh sender (or the refusal) happens in the same transaction, which commits.
    from dbmail.models import Suppression

    SenderAccountFactory(address="club@example.org", display_name="Club")
    outbox.enqueue("a@example.net", "s", "t", from_email="club@example.org")
    Suppression.objects.create(address="c@example.net", reason=Suppression.Reason.COMPLAINED)
    with transaction.atomic():
        dropped = outbox.enqueue("c@example.net", "s", "t", from_email="club@example.org")
        queued = outbox.enqueue("d@example.net", "s", "t", from_email="club@example.org")
    assert TextOfEmail.objects.get(pk=dropped.pk).status == Status.DROPPED
    assert TextOfEmail.objects.get(pk=queued.pk).status == Status.QUEUED


def test_values_sent_as_they_are_are_what_the_orm_would_send():
    # enqueue skips the ORM's preparing for values psycopg2 sends unchanged; for each such value of
    # an email (with a user, a date, a raw message) the ORM must have given the same back. Aware dates
    # go as their ISO text and an empty JSON object as {}: the same values to PostgreSQL.
    from datetime import datetime, timedelta

    from django.db import connection
    from django.utils import timezone

    from .factories import UserFactory

    user = UserFactory()
    email = outbox.enqueue(
        "Ann <ann@example.net>", "s", "t", user=user, send_at=timezone.now() + timedelta(hours=1), raw_message=b"x"
    )
    email.sent_at = timezone.now()
    fields = outbox._insert_fields()
    as_they_are, as_text = 0, []
    for (field, _), value in zip(fields, outbox._values(email, fields, connection), strict=True):
        original = getattr(email, field.attname)
        if value is original:
            as_they_are += 1
            assert value == field.get_db_prep_save(original, connection), field.name
        elif isinstance(original, datetime):
            assert value == original.isoformat() and datetime.fromisoformat(value) == original
            as_text.append(field.name)
        elif field.name == "headers":
            assert (original, value) == ({}, "{}")
            as_text.append(field.name)
        else:  # prepared by the ORM: bytes only, here
            assert field.name == "raw_message", field.name
    assert sorted(as_text) == ["created_at", "headers", "next_attempt_at", "sent_at", "status_changed_at"]
    assert as_they_are == len(fields) - 6
    with connection.cursor() as cursor:  # and PostgreSQL reads the texts back as the values
        cursor.execute("SELECT %s::timestamptz, %s::jsonb = '{}'::jsonb", [email.next_attempt_at.isoformat(), "{}"])
        assert cursor.fetchone() == (email.next_attempt_at, True)


def test_an_enqueued_email_is_the_row_stored_and_what_the_keyword_path_would_have_made(django_assert_num_queries):
    # enqueue builds its email from values in the fields' order (outbox._new_email), not the ORM's keywords.
    from datetime import timedelta

    from django.utils import timezone

    from .factories import UserFactory

    user = UserFactory()
    email = outbox.enqueue("Ann <ann@example.net>", "s", "t", "<p>t</p>", user=user, headers={"X-A": "1"})
    stored = TextOfEmail.objects.get(pk=email.pk)
    for field in TextOfEmail._meta.concrete_fields:
        assert getattr(email, field.attname) == getattr(stored, field.attname), field.name
    with django_assert_num_queries(0):
        assert email.user is user
    columns = {f.attname: getattr(stored, f.attname) for f in TextOfEmail._meta.concrete_fields if f.attname != "id"}
    columns["next_attempt_at"] += timedelta(hours=1)
    made, keyword = outbox._new_email(dict(columns)), TextOfEmail(**columns)
    assert [getattr(made, f.attname) for f in TextOfEmail._meta.concrete_fields] == [
        getattr(keyword, f.attname) for f in TextOfEmail._meta.concrete_fields
    ]
    assert made._state.adding and made.pk is None and timezone.is_aware(made.next_attempt_at)


def test_the_checked_insert_sends_what_enqueue_gives_and_writes_the_rest_at_their_defaults(monkeypatch):
    # The columns enqueue does not give go in the prepared statement as constants (outbox._fixed_columns):
    # what it gives must be exactly outbox._GIVEN, and the constants the model's defaults.
    from dbmail import states

    given = []
    new_email = outbox._new_email
    monkeypatch.setattr(
        outbox, "_new_email", lambda columns, user=None: given.append(set(columns)) or new_email(columns, user)
    )
    email = outbox.enqueue("a@example.net", "s", "t", reply_to="r@example.org", raw_message=b"x", message_id="<m@x>")
    assert given[0] | {"user_id"} == outbox._GIVEN
    fixed = outbox._fixed_columns()
    assert "status" in fixed and "attempts" in fixed and not fixed.keys() & outbox._GIVEN
    stored = TextOfEmail.objects.get(pk=email.pk)
    assert stored.status == states.ENQUEUE.target and (stored.reply_to, bytes(stored.raw_message)) == (
        "r@example.org",
        b"x",
    )
    for name, default in outbox._defaults():
        if name in fixed:
            assert getattr(stored, name) == default == getattr(email, name), name


def test_a_user_that_is_not_a_user_is_refused_and_nothing_is_stored():
    with pytest.raises(ValueError, match="must be a .*User.* instance"):
        outbox.enqueue("a@example.net", "s", "t", user="ann")
    assert not TextOfEmail.objects.exists()
