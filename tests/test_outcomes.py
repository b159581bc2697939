from datetime import timedelta

import pytest
from django.utils import timezone

from dbmail.models import TextOfEmail
from dbmail.send import claims, dbworker, outcomes, retry

from .factories import TextOfEmailFactory

Status = TextOfEmail.Status


@pytest.mark.django_db
def test_an_outcome_under_a_lost_claim_changes_nothing():
    email = TextOfEmailFactory()
    stale = claims.claim(1)
    TextOfEmail.objects.filter(pk=email.pk).update(leased_until=timezone.now() - timedelta(seconds=1))
    fresh = claims.claim(1)
    outcomes.record(stale.emails[0], stale.token, retry.Outcome("dropped", 550, "late answer"))
    email.refresh_from_db()
    assert email.status == Status.SENDING and email.claim_token == fresh.token
    # The takeover's line (the first sender may have sent it: dbmail.send.takeover), then the late answer's.
    assert list(email.events.values_list("outcome", flat=True)) == [Status.SENDING, "lost-lease"]


@pytest.mark.django_db
@pytest.mark.parametrize("writer", [outcomes._write_postgresql, outcomes._write_portable])
def test_both_writers_record_the_same_way(monkeypatch, writer):
    monkeypatch.setattr(outcomes, "_write_postgresql", writer)
    deferred = TextOfEmailFactory()
    sent = TextOfEmailFactory()
    batch = claims.claim(2)
    by_pk = {e.pk: e for e in batch.emails}
    outcomes.record(by_pk[deferred.pk], batch.token, retry.Outcome("deferred", 451, "later"))
    outcomes.record(by_pk[sent.pk], batch.token, retry.Outcome("sent", 250, "queued as X"))
    deferred.refresh_from_db()
    sent.refresh_from_db()
    assert (deferred.status, deferred.last_error, deferred.claim_token) == (Status.DEFERRED, "later", None)
    assert deferred.next_attempt_at > timezone.now() + timedelta(seconds=250) and deferred.sent_at is None
    assert (sent.status, sent.last_error, sent.leased_until) == (Status.SENT, "", None) and sent.sent_at
    assert [(e.kind, e.smtp_code, e.outcome) for e in sent.events.all()] == [("attempt", 250, "sent")]


@pytest.mark.django_db(transaction=True)
def test_threaded_worker_commits_on_its_own_connection_in_order():
    emails = TextOfEmailFactory.create_batch(20)
    batch = claims.claim(20)
    worker = dbworker.ThreadedWorker()
    for email in batch.emails:
        worker.record(email, batch.token, retry.Outcome("sent", 250, "ok"))
    # A call queued after the outcomes sees them committed.
    assert worker.call(lambda: TextOfEmail.objects.filter(status=Status.SENT).count()).result() == 20
    worker.close()
    assert set(TextOfEmail.objects.values_list("status", flat=True)) == {Status.SENT}
    assert sum(e.events.count() for e in emails) == 20


@pytest.mark.django_db(transaction=True)
def test_threaded_worker_holds_the_sender_once_the_window_waits_for_its_commit(monkeypatch):
    """The crash bound: never more than DBMAIL_OUTCOME_WINDOW outcomes handed over and not committed."""
    import threading

    TextOfEmailFactory.create_batch(6)
    batch = claims.claim(6)
    sent = retry.Outcome("sent", 250, "ok")
    gate, written, real = threading.Event(), [], outcomes.write

    def held(rows):
        gate.wait(10)
        written.extend(row.pk for row in rows)
        return real(rows)

    monkeypatch.setattr(outcomes, "write", held)
    worker = dbworker.ThreadedWorker(window=4)
    for email in batch.emails[:4]:
        worker.record(email, batch.token, sent)
    fifth = threading.Thread(target=worker.record, args=(batch.emails[4], batch.token, sent))
    fifth.start()
    fifth.join(0.5)
    assert fifth.is_alive()  # four wait for their commit: the fifth is not handed over
    assert written == []
    gate.set()
    fifth.join(10)
    assert not fifth.is_alive()
    worker.record(batch.emails[5], batch.token, sent)
    worker.close()
    assert written == [e.pk for e in batch.emails]  # in the order handed over
    assert set(TextOfEmail.objects.values_list("status", flat=True)) == {Status.SENT}


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_threaded_worker_whose_own_loop_fails_keeps_every_outcome_handed_over(monkeypatch):
    TextOfEmailFactory.create_batch(3)
    batch = claims.claim(3)
    sent = retry.Outcome("sent", 250, "ok")

    def broken(self):
        raise RuntimeError("the loop broke")

    monkeypatch.setattr(dbworker.ThreadedWorker, "_gather", broken)
    worker = dbworker.ThreadedWorker(window=8)
    worker.record(batch.emails[0], batch.token, sent)
    worker._thread.join(10)  # woken by the first outcome, it fails gathering more
    assert not worker._thread.is_alive()
    with pytest.raises(RuntimeError, match="loop broke"):
        worker.record(batch.emails[1], batch.token, sent)  # the sender stops
    assert [row.pk for row in worker.unwritten] == [e.pk for e in batch.emails[:2]]  # kept for recovery
    worker.close(raise_error=False)
    assert set(TextOfEmail.objects.values_list("status", flat=True)) == {Status.SENDING}


@pytest.mark.django_db(transaction=True)
def test_threaded_worker_surfaces_a_database_error(monkeypatch):
    TextOfEmailFactory()
    batch = claims.claim(1)

    def broken(*args):
        raise RuntimeError("database went away")

    monkeypatch.setattr(outcomes, "write", broken)
    worker = dbworker.ThreadedWorker(window=1)
    worker.record(batch.emails[0], batch.token, retry.Outcome("sent", 250, "ok"))
    with pytest.raises(RuntimeError, match="went away"):
        worker.record(batch.emails[0], batch.token, retry.Outcome("sent", 250, "ok"))  # the sender stops
    with pytest.raises(RuntimeError, match="went away"):
        worker.close()


@pytest.mark.django_db(transaction=True)
def test_a_group_of_outcomes_is_one_write_and_a_lost_claim_is_reported():
    emails = TextOfEmailFactory.create_batch(3)
    batch = claims.claim(3)
    rows = [outcomes.as_row(e, batch.token, retry.Outcome("sent", 250, "ok")) for e in batch.emails]
    rows[1] = outcomes.as_row(batch.emails[1], "00000000-0000-0000-0000-000000000000", retry.Outcome("sent", 250, "x"))
    assert outcomes.write(rows) == [emails[1].pk]
    statuses = dict(TextOfEmail.objects.values_list("pk", "status"))
    assert statuses == {emails[0].pk: Status.SENT, emails[1].pk: Status.SENDING, emails[2].pk: Status.SENT}


@pytest.mark.django_db
def test_an_outcome_finds_its_email_by_id_whatever_the_statistics_say():
    """Statistics taken while nothing was being sent must not make each outcome walk every row being sent."""
    from django.db import connection
    from django.utils import timezone

    from dbmail import rollup
    from dbmail.send import claims

    from .factories import SenderAccountFactory

    account = SenderAccountFactory()
    TextOfEmail.objects.bulk_create(  # enough rows for the planner to prefer an index to reading the table
        TextOfEmail(account=account, to_address=f"r{i}@example.net", from_header="Office <office@example.org>",
                    envelope_sender="office@example.org", message_id=f"<{i}.probe@example.org>", text="Hi.\n")
        for i in range(3000)
    )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE dbmail_textofemail")  # every row queued: "sending" looks rare
    batch = claims.claim(200, due_by=timezone.now())
    email = batch.emails[0]
    sql = outcomes._PREPARE_SQL.format(count_sql=rollup.insert_sql("updated"))
    with connection.cursor() as cursor:
        cursor.execute(sql.replace("PREPARE dbmail_write_outcomes", "PREPARE plan_probe"))
        cursor.execute(
            "EXPLAIN EXECUTE plan_probe (ARRAY[%s]::bigint[], ARRAY[%s]::uuid[], ARRAY['sent'], ARRAY[now()], "
            "ARRAY[''], ARRAY[now()], ARRAY[NULL::timestamptz], ARRAY[250::smallint], ARRAY['ok'], ARRAY[true], "
            "ARRAY[false], ARRAY[current_date])",
            [email.pk, str(batch.token)],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE plan_probe")
    update = plan[plan.index("Update on dbmail_textofemail") :]
    assert "dbmail_textofemail_pkey" in update and "dbmail_lease" not in update, plan


@pytest.mark.django_db
def test_a_group_of_outcomes_keeps_every_character_and_moment_of_each():
    """The outcome statement's arrays are written as PostgreSQL array text (outcomes._texts, _moments...):
    what an SMTP server may say (quotes, backslashes, braces, commas, line breaks, the word NULL,
    UTF-8) and every microsecond and offset of each moment must come back as they were."""
    from zoneinfo import ZoneInfo

    nasty = [
        'he said "no" \\ and \\" then {a,b} , NULL',
        "NULL",
        "",
        "line one\nline two\r\n\ttabbed, ‘quoted’ ünïcode 😀",
        "\\",
        '"',
        "{}",
    ]
    emails = [TextOfEmailFactory() for _ in nasty]
    batch = claims.claim(len(nasty))
    by_pk = {e.pk: e for e in batch.emails}
    base = timezone.now().astimezone(ZoneInfo("Pacific/Chatham"))  # an offset of 12:45 or 13:45
    rows = []
    for i, (email, text) in enumerate(zip(emails, nasty, strict=True)):
        status = retry.Outcome("deferred" if i % 2 else "sent", None if i == 2 else 400 + i, text)
        rows.append(outcomes.as_row(by_pk[email.pk], batch.token, status, now=base + timedelta(microseconds=i * 7)))
    assert outcomes.write(rows) == []
    for email, text, row in zip(emails, nasty, rows, strict=True):
        email.refresh_from_db()
        event = email.events.get()
        assert event.text == text and event.smtp_code == row.smtp_code and event.at == row.at
        assert email.status_changed_at == row.at and email.status == row.status
        assert email.last_error == ("" if row.status == Status.SENT else text)
        assert email.sent_at == row.sent_at if row.sent_at else email.next_attempt_at == row.next_attempt_at


@pytest.mark.django_db
@pytest.mark.parametrize("writer", [outcomes._write_postgresql, outcomes._write_portable])
def test_an_outcome_for_an_email_deleted_meanwhile_is_a_lost_claim_and_logs_nothing(monkeypatch, writer):
    """The log's email has no database constraint (migration 0021): the writer itself logs nothing naming nothing."""
    from dbmail.models import DeliveryEvent

    monkeypatch.setattr(outcomes, "_write_postgresql", writer)
    gone, kept = TextOfEmailFactory.create_batch(2)
    batch = claims.claim(2)
    rows = [outcomes.as_row(e, batch.token, retry.Outcome("sent", 250, "ok")) for e in batch.emails]
    TextOfEmail.objects.filter(pk=gone.pk).delete()  # its request deleted while it was being sent
    assert outcomes.write(rows) == [gone.pk]
    assert list(DeliveryEvent.objects.values_list("email_id", "outcome")) == [(kept.pk, "sent")]
    assert TextOfEmail.objects.get(pk=kept.pk).status == Status.SENT
