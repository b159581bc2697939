from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from dbmail.intake import expand
from dbmail.models import AuditEvent, MessageRequest, SenderAccount, Suppression, TextOfEmail

from . import poison
from .factories import GroupFactory, MessageRequestFactory, UserFactory

pytestmark = pytest.mark.django_db
Status = TextOfEmail.Status


def body(text):
    """The text as written, without the unsubscribe footer a body without {{ unsubscribe_url }} gets."""
    written, footer, link = text.partition("\n\n--\nNo longer want these emails? Unsubscribe: ")
    assert footer and "/unsubscribe/" in link
    return written


def test_one_rendered_email_per_member_of_a_group():
    teachers = GroupFactory(name="Teachers")
    ann = UserFactory(username="ann", first_name="Ann", last_name="Smith", groups=[teachers])
    UserFactory(username="bob", first_name="Bob", groups=[teachers])
    UserFactory(username="outsider")
    request = MessageRequestFactory(
        recipient_set="groups",
        recipient_params={"groups": ["Teachers"]},
        subject="Hi {{ first_name }}",
        text_body="Dear {{ name }} ({{ username }}), {{ motto }}",
        context={"motto": "read on"},
        reply_to="desk@example.org",
    )
    result = expand.expand_due()
    assert (result.requests, result.emails) == (1, 2)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == 2
    email = TextOfEmail.objects.get(to_address="ann@example.org")
    assert email.subject == "Hi Ann" and body(email.text) == "Dear Ann Smith (ann), read on"
    assert email.user == ann and email.to_name == "Ann Smith" and email.status == Status.QUEUED
    assert email.from_header == "The Office <office@example.org>" and email.envelope_sender == "office@example.org"
    assert email.reply_to == "desk@example.org"
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in email.headers["List-Unsubscribe"]
    assert len({e.message_id for e in TextOfEmail.objects.all()}) == 2


def test_inactive_suppressed_addressless_and_repeated_are_left_out():
    UserFactory(username="ok")
    UserFactory(username="sleepy", is_active=False)
    UserFactory(username="nomail", email="")
    UserFactory(username="twin1", email="Twin@Example.org")
    UserFactory(username="twin2", email="twin@example.ORG")
    UserFactory(username="quiet")
    Suppression.objects.create(address="QUIET@example.org")
    MessageRequestFactory(recipient_set="all_active")
    expand.expand_due()
    assert sorted(TextOfEmail.objects.values_list("to_address", flat=True)) == [
        "Twin@example.org",
        "ok@example.org",
    ]


def test_explicit_rows_carry_their_own_variables_and_bad_rows_are_recorded():
    MessageRequestFactory(
        recipient_set="addresses",
        recipient_params={
            "rows": [
                {"email": "ann@example.net", "name": "Ann Smith", "balance": "12.50"},
                "plain@example.net",
                {"email": "not-an-address", "name": "Broken"},
                {"email": "ANN@example.net", "name": "Duplicate"},
            ]
        },
        subject="Balance",
        text_body="{{ first_name }} owes {{ balance }}",
    )
    expand.expand_due()
    by_address = {e.to_address.lower(): e for e in TextOfEmail.objects.all()}
    assert set(by_address) == {"ann@example.net", "plain@example.net", "not-an-address"}
    assert body(by_address["ann@example.net"].text) == "Ann owes 12.50"
    assert body(by_address["plain@example.net"].text) == " owes "
    broken = by_address["not-an-address"]
    assert broken.status == Status.DROPPED and "invalid address" in broken.last_error


def test_a_render_error_drops_only_that_recipient():
    MessageRequestFactory(
        recipient_set="addresses",
        recipient_params={"rows": [{"email": "a@example.net", "items": "xy"}, {"email": "b@example.net", "items": 3}]},
        text_body="{% for i in items %}[{{ i }}]{% endfor %}",
    )
    expand.expand_due()
    good = TextOfEmail.objects.get(to_address="a@example.net")
    bad = TextOfEmail.objects.get(to_address="b@example.net")
    assert (good.status, body(good.text)) == (Status.QUEUED, "[x][y]")
    assert bad.status == Status.DROPPED and "render error: TypeError" in bad.last_error


def test_not_before_send_at_and_never_drafts():
    UserFactory()
    later = MessageRequestFactory(send_at=timezone.now() + timedelta(hours=1))
    MessageRequestFactory(status=MessageRequest.Status.DRAFT)
    assert expand.expand_due().requests == 0
    later.send_at = timezone.now()
    later.save()
    assert expand.expand_due().requests == 1


def test_resumes_from_the_checkpoint_after_a_crash_without_duplicates():
    User = get_user_model()
    User.objects.bulk_create(
        [User(username=f"u{i:05d}", email=f"u{i:05d}@example.org", first_name=f"F{i}") for i in range(5000)]
    )
    request = MessageRequestFactory(recipient_set="all_active")
    claimed = expand.claim_request()
    chunks = []

    def crash_on_third_chunk(n):
        chunks.append(n)
        if len(chunks) == 3:
            raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        expand.expand(claimed, chunk_size=1000, on_chunk=crash_on_third_chunk)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDING
    assert chunks == [200, 1000, 1000]  # a small first chunk starts the pipeline sooner
    assert request.emails.count() == 2200  # the third chunk committed before the "crash" hook ran
    assert expand.expand_due().requests == 0  # its lease still holds

    MessageRequest.objects.filter(pk=request.pk).update(expand_lease_until=timezone.now())
    result = expand.expand_due()
    assert result.requests == 1
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == 5000
    assert request.emails.count() == 5000
    assert request.emails.values("to_address").distinct().count() == 5000


def test_a_repeated_chunk_is_harmless():
    UserFactory.create_batch(5)
    request = MessageRequestFactory(recipient_set="all_active")
    claimed = expand.claim_request()
    expand.expand(claimed)
    # As if a second expander re-ran the whole set after a lost checkpoint.
    MessageRequest.objects.filter(pk=request.pk).update(
        status="expanding", checkpoint=None, expand_token=claimed.expand_token
    )
    claimed.checkpoint = None
    assert expand.expand(claimed) == 5
    assert request.emails.count() == 5


@pytest.mark.django_db(transaction=True)
def test_a_repeated_chunk_written_aside_is_harmless_and_completes_the_chunk(monkeypatch, settings):
    """The emails' writer COPYs without a savepoint: a row already there rolls the chunk back, which goes in again."""
    from dbmail.intake import copyrows

    settings.DBMAIL_EXPAND_WRITER = "threads"  # the same writers as the process's, counted in this process

    UserFactory.create_batch(30)
    request = MessageRequestFactory(recipient_set="all_active")
    claimed = expand.claim_request()
    assert expand._can_write_aside()
    assert expand.expand(claimed, chunk_size=10) == 30
    # As if a second expander re-ran the set after a lost checkpoint, with some of its emails gone meanwhile.
    gone = list(request.emails.order_by("pk").values_list("pk", flat=True))[3:25:2]
    request.emails.filter(pk__in=gone).delete()
    MessageRequest.objects.filter(pk=request.pk).update(
        status="expanding", checkpoint=None, expand_token=claimed.expand_token
    )
    claimed.checkpoint = None
    copies = []
    real = copyrows.insert_new

    def counted(*args, **kwargs):
        copies.append(real(*args, **kwargs))
        return copies[-1]

    monkeypatch.setattr(copyrows, "insert_new", counted)
    assert expand.expand(claimed, chunk_size=10) == 30
    assert request.emails.count() == 30 and request.emails.values("to_address").distinct().count() == 30
    assert sum(copies) == 11  # the deleted ones, made again; each chunk went through insert_new
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.checkpoint["after"] is not None


def test_cancel_during_expansion_stops_it():
    UserFactory.create_batch(30)
    request = MessageRequestFactory(recipient_set="all_active")
    claimed = expand.claim_request()
    done = []

    def cancel_after_first(n):
        done.append(n)
        if len(done) == 1:
            MessageRequest.objects.get(pk=request.pk).cancel()

    expand.expand(claimed, chunk_size=10, on_chunk=cancel_after_first)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.CANCELLED
    assert len(done) == 1
    assert set(request.emails.values_list("status", flat=True)) == {Status.CANCELLED}


def test_two_expanders_never_hold_the_same_request():
    MessageRequestFactory()
    first = expand.claim_request()
    assert first is not None
    assert expand.claim_request() is None


@pytest.mark.django_db(transaction=True)
def test_chunks_written_aside_commit_in_order_and_a_cancel_stops_them(settings):
    settings.DBMAIL_EXPAND_WRITER = "threads"  # on_chunk as each commit ends (tests/test_expand_writer_process.py)
    User = get_user_model()
    User.objects.bulk_create(User(username=f"w{i:04d}", email=f"w{i:04d}@example.org") for i in range(1200))
    request = MessageRequestFactory(recipient_set="all_active", text_body="Hi {{ username }}")
    claimed = expand.claim_request()
    assert expand._can_write_aside()  # outside any transaction: the writer thread is used
    assert expand.expand(claimed, chunk_size=100) == 1200
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED
    assert {body(t) for t in TextOfEmail.objects.values_list("text", flat=True)} == {
        f"Hi w{i:04d}" for i in range(1200)
    }

    second = MessageRequestFactory(recipient_set="all_active")
    claimed = expand.claim_request()
    seen = []

    def cancel_after_first(n):
        seen.append(n)
        if len(seen) == 1:
            MessageRequest.objects.get(pk=second.pk).cancel()

    assert expand.expand(claimed, chunk_size=100, on_chunk=cancel_after_first) == 0
    assert len(seen) == 1 and second.emails.exclude(status=Status.CANCELLED).count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_chunk_whose_recipients_are_all_left_out_still_moves_the_checkpoint():
    UserFactory(username="gone")
    UserFactory(username="kept")
    Suppression.objects.create(address="gone@example.org")
    request = MessageRequestFactory(recipient_set="all_active")
    assert expand.expand(expand.claim_request(), chunk_size=1) == 1
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED
    assert list(request.emails.values_list("to_address", flat=True)) == ["kept@example.org"]


# --- A poisoned request fails alone (issue 11, point 1) --------------------------------------


@pytest.fixture
def broken_sets():
    poison.BROKEN["on"] = True
    yield poison.BROKEN
    poison.BROKEN["on"] = True


@pytest.mark.parametrize("kind", sorted(poison.POISONS))
def test_a_poisoned_request_fails_alone_with_the_reason_in_words(kind, broken_sets):
    UserFactory.create_batch(3)
    fields, words = poison.POISONS[kind]
    bad = MessageRequestFactory(send_at=timezone.now() - timedelta(minutes=1), **fields)
    good = MessageRequestFactory(recipient_set="all_active")

    result = expand.expand_due()

    assert result.requests == 2 and len(result.failed) == 1
    assert result.failed[0].startswith(f"#{bad.pk}: ") and words in result.failed[0]
    bad.refresh_from_db()
    assert bad.status == MessageRequest.Status.FAILED and words in bad.failure and bad.failed_at
    assert (bad.expand_token, bad.expand_lease_until) == (None, None)
    event = bad.audit_events.get()
    assert event.kind == AuditEvent.Kind.FAILURE and words in event.detail and event.actor is None
    assert (event.actor_name, event.at) == ("dbmail_cron", bad.failed_at)
    good.refresh_from_db()
    assert good.status == MessageRequest.Status.EXPANDED and good.emails.count() == 3
    assert expand.expand_due().requests == 0  # a failed request is not claimed again


def test_a_bug_in_a_set_keeps_its_traceback_in_the_history(broken_sets):
    bad = MessageRequestFactory(recipient_set="test_explodes")
    expand.expand_due()
    text = bad.audit_events.get().detail
    assert (
        "\n" in text
        and text.startswith("recipient set 'test_explodes' failed")
        and "Traceback" in text
        and "explodes" in text
    )
    assert "Traceback" not in MessageRequest.objects.get(pk=bad.pk).failure  # the failure itself is words only


@pytest.mark.django_db(transaction=True)
def test_a_failed_request_retried_after_the_fix_resumes_from_its_checkpoint(broken_sets, editor):
    request = MessageRequestFactory(recipient_set="test_breaks_midway")
    assert expand._can_write_aside()  # the writer thread is in play, as in production
    assert expand.expand_due().failed
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.FAILED
    assert request.checkpoint == {"after": 199} and request.emails.count() == 200  # the first chunk was kept

    assert request.retry(user=editor) and not request.retry(user=editor)  # only a failed request goes back
    request.refresh_from_db()
    assert (request.status, request.failure, request.failed_at) == (MessageRequest.Status.QUEUED, "", None)
    failed = expand.expand_due().failed  # not fixed yet: fails again, the same way
    assert failed == [f"#{request.pk}: recipient set 'test_breaks_midway' failed with parameters {{}}: "
                      "ConnectionResetError: the directory server went away"]  # fmt: skip

    broken_sets["on"] = False  # the cause is fixed
    assert "after position 199" in MessageRequest.objects.get(pk=request.pk).retry(user=editor)  # its history's words
    result = expand.expand_due()
    assert (result.requests, result.failed) == (1, [])
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.recipient_count == 400
    assert request.emails.values("to_address").distinct().count() == 400
    kinds = [(e.kind, e.actor_name) for e in request.audit_events.order_by("at", "id")]
    assert kinds == [("failure", "dbmail_cron"), ("failure", "dbmail_cron")]  # a retry is its caller's to record


def test_a_request_of_an_inactive_sender_is_held_not_expanded():
    UserFactory.create_batch(2)
    request = MessageRequestFactory(recipient_set="all_active")
    SenderAccount.objects.filter(pk=request.sender_id).update(active=False)
    assert expand.expand_due().requests == 0
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.QUEUED and request.held and request.shown_status() == "held"
    SenderAccount.objects.filter(pk=request.sender_id).update(active=True)
    assert expand.expand_due().emails == 2


def test_an_unexpected_crash_while_rendering_fails_the_request_not_the_run(monkeypatch):
    UserFactory.create_batch(2)
    crashing = MessageRequestFactory(subject="crash me", send_at=timezone.now() - timedelta(minutes=1))
    other = MessageRequestFactory()
    real = expand.RowMaker.own

    def buggy(maker, recipient):  # a bug (ours or a library's) that only this request's data triggers
        if maker.request_values["request_id"] == crashing.pk:
            raise KeyError("unsubscribe_url")
        return real(maker, recipient)

    monkeypatch.setattr(expand.RowMaker, "own", buggy)
    result = expand.expand_due()
    assert result.failed == [f"#{crashing.pk}: expansion failed: KeyError: 'unsubscribe_url'"]
    assert MessageRequest.objects.get(pk=other.pk).emails.count() == 2
    assert "Traceback" in crashing.audit_events.get().detail


# --- The email's user has no foreign key in the database (docs/scaling.md#where-expansion-spends) -----


@pytest.mark.django_db(transaction=True)
def test_a_user_deleted_while_their_chunk_is_written_fails_nothing(monkeypatch):
    """PostgreSQL used to check each email's user at commit: one user deleted mid-chunk failed the request."""
    from django.db import connection

    from dbmail.intake import copyrows

    users = [UserFactory(username=f"u{i}") for i in range(5)]
    request = MessageRequestFactory(recipient_set="all_active")
    copy = copyrows.copy  # what the emails' writer runs in its transaction (expand._commit_aside)

    def delete_one_then_copy(*args, **kwargs):
        # Read, rendered, not yet committed: the user goes in the same transaction, as a concurrent
        # deletion that commits first would look to this one's check at commit.
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM auth_user WHERE id = %s", [users[2].pk])
        return copy(*args, **kwargs)

    monkeypatch.setattr(copyrows, "copy", delete_one_then_copy)
    assert expand.expand(expand.claim_request()) == 5
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.EXPANDED and request.emails.count() == 5


def test_deleting_a_user_through_django_still_clears_their_emails_user():
    ann = UserFactory(username="ann")
    UserFactory(username="bob")
    MessageRequestFactory(recipient_set="all_active")
    expand.expand_due()
    ann.delete()
    email = TextOfEmail.objects.get(to_address="ann@example.org")
    assert email.user_id is None and email.status == Status.QUEUED
    assert TextOfEmail.objects.get(to_address="bob@example.org").user.username == "bob"


# --- Tokens and emails written aside by two writers (dbmail.intake.expand._tokens_first) -------------


def _tokens_in(email):
    import re

    return set(re.findall(r"/unsubscribe/([a-z2-7]{26})/", email.headers["List-Unsubscribe"]))


@pytest.mark.django_db(transaction=True)
def test_a_chunks_tokens_are_committed_before_its_emails_and_each_email_token_works(monkeypatch, settings):
    settings.DBMAIL_EXPAND_WRITER = "threads"  # the writers' calls watched from this process
    import psycopg2
    from django.db import connection

    from dbmail.content import tokens
    from dbmail.intake import copyrows

    User = get_user_model()
    User.objects.bulk_create(User(username=f"t{i:03d}", email=f"t{i:03d}@example.org") for i in range(250))
    MessageRequestFactory(recipient_set="all_active")
    outside = psycopg2.connect(
        dbname=connection.settings_dict["NAME"],
        user=connection.settings_dict["USER"],
        host=connection.settings_dict["HOST"],
        port=connection.settings_dict["PORT"] or 5432,
    )
    outside.autocommit = True
    copy, seen = copyrows.copy, []

    def check_then_copy(table, columns, data, *args, **kwargs):
        # Inside the emails' transaction: another connection must already see this chunk's tokens.
        addresses = [line.split("\t")[1] for line in data.decode().splitlines()]
        with outside.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM dbmail_addresstoken WHERE address = ANY(%s)", [addresses])
            seen.append((len(addresses), cursor.fetchone()[0]))
        if len(seen) == 2:
            raise RuntimeError("the emails' writer dies on its second chunk")
        return copy(table, columns, data, *args, **kwargs)

    monkeypatch.setattr(copyrows, "copy", check_then_copy)
    try:
        with pytest.raises(expand.RequestFailed, match="the emails' writer dies"):
            expand.expand(expand.claim_request(), chunk_size=100)
    finally:
        outside.close()
    assert seen and all(n == stored for n, stored in seen)
    emails = list(TextOfEmail.objects.all())
    assert len(emails) == 100  # the first chunk only
    for email in emails:
        (token,) = _tokens_in(email)
        assert tokens.address_for(token) == email.to_address


def test_tokens_are_stored_as_their_addresses_are_written():
    from dbmail.models import AddressToken

    addresses = [
        '"quoted\\\\\\"back"@example.org',
        "ünïcødé.用户@example.org",
        "o'neil@example.org",
        "plain@example.org",
    ]
    AddressToken.objects.create(token="a" * 26, address="before@example.org")
    expand._store_tokens([(f"{i}" * 26, a) for i, a in enumerate(addresses)] + [("a" * 26, "other@example.org")])
    stored = dict(AddressToken.objects.values_list("token", "address"))
    assert stored == {"a" * 26: "before@example.org", **{f"{i}" * 26: a for i, a in enumerate(addresses)}}


@pytest.mark.django_db(transaction=True)
def test_an_error_storing_tokens_stops_the_emails_too(monkeypatch, settings):
    settings.DBMAIL_EXPAND_WRITER = "threads"  # the writers' calls watched from this process
    User = get_user_model()
    User.objects.bulk_create(User(username=f"s{i:03d}", email=f"s{i:03d}@example.org") for i in range(250))
    request = MessageRequestFactory(recipient_set="all_active")
    calls = []

    def fail_second(pairs, store=expand._store_tokens):
        calls.append(len(pairs))
        if len(calls) == 2:
            raise RuntimeError("tokens cannot be stored")
        return store(pairs)

    monkeypatch.setattr(expand, "_store_tokens", fail_second)
    with pytest.raises(expand.RequestFailed, match="tokens cannot be stored"):
        expand.expand(expand.claim_request(), chunk_size=100)
    request.refresh_from_db()
    assert request.status == MessageRequest.Status.FAILED
    assert request.emails.count() == 100 and len(calls) == 2  # no chunk past the failed one


@pytest.mark.django_db(transaction=True)
def test_a_request_deleted_while_a_chunk_is_written_leaves_no_email_behind():
    """The emails' request_id has no database constraint: MessageRequest.delete() must wait for the chunk."""
    import threading

    from django.db import connection, transaction

    UserFactory(username="early")
    request = MessageRequestFactory(recipient_set="all_active")
    expand.expand(expand.claim_request())
    written, release, deleted = threading.Event(), threading.Event(), threading.Event()

    def chunk_in_flight():
        # What expansion's commit does: the request row updated first, then the emails, then the commit.
        try:
            with transaction.atomic():
                MessageRequest.objects.filter(pk=request.pk).update(checkpoint={"after": 99})
                TextOfEmail.objects.create(
                    request_id=request.pk, account_id=request.sender_id, to_address="late@example.org"
                )
                written.set()
                release.wait(10)
        finally:
            connection.close()

    def delete():
        try:
            MessageRequest.objects.get(pk=request.pk).delete()
            deleted.set()
        finally:
            connection.close()

    writer = threading.Thread(target=chunk_in_flight)
    writer.start()
    assert written.wait(10)
    deleter = threading.Thread(target=delete)
    deleter.start()
    assert not deleted.wait(0.5)  # waits for the chunk's transaction
    release.set()
    writer.join(10)
    deleter.join(10)
    assert deleted.is_set()
    assert not MessageRequest.objects.filter(pk=request.pk).exists()
    assert not TextOfEmail.objects.filter(request_id=request.pk).exists()  # the late chunk went with it
