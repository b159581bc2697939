"""Migration 0022: the suppression list re-keyed by mailbox_key, colliding rows merged, nothing forgotten."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from dbmail.models import AuditEvent, Suppression

BEFORE, AFTER = [("dbmail", "0021_event_email")], [("dbmail", "0022_suppression_keys")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_rows_are_re_keyed_and_collisions_keep_the_strongest_reason_and_the_earliest_date():
    t = timezone.now() - timedelta(days=30)
    try:
        old = _migrate(BEFORE)
        Old = old.get_model("dbmail", "Suppression")

        def row(address, reason, days, note=""):
            # What the old code stored: the address as written, lower-cased.
            return Old.objects.create(address=address, reason=reason, created_at=t + timedelta(days=days), note=note)

        kept = row("anna@xn--bcher-kva.example", "unsubscribed", 5, "unsubscribe link")  # already a key
        row("anna@bücher.example", "bounced", 9, "550 5.1.1 no such user")
        row('"anna"@bücher.example.', "manual", 2, "asked by phone")  # the earliest
        row("bob@example.org", "unsubscribed", 1)  # a key already, alone: untouched
        row("cy@exämple.org", "manual", 3, "by hand")  # re-keyed, no collision
        row("dee@example.org.", "unsubscribed", 4)
        row("dee@example.org", "complained", 6, "abuse report")  # the complaint wins over the unsubscribe
        row('"eve smith"@example.org', "bounced", 7)  # needs its quotes: stays as it is
        row("fay@x.example", "manual", 8, "blocked")
        row("fay@x.example.", "unsubscribed", 0)  # a block by hand is not weakened to an unsubscribe
        audits_before = AuditEvent.objects.count()

        _migrate(AFTER)
        rows = {r.address: (r.reason, r.created_at - t, r.note) for r in Suppression.objects.all()}
        assert rows == {
            "anna@xn--bcher-kva.example": ("bounced", timedelta(days=2), "550 5.1.1 no such user"),
            "bob@example.org": ("unsubscribed", timedelta(days=1), ""),
            "cy@xn--exmple-cua.org": ("manual", timedelta(days=3), "by hand"),
            "dee@example.org": ("complained", timedelta(days=4), "abuse report"),
            '"eve smith"@example.org': ("bounced", timedelta(days=7), ""),
            "fay@x.example": ("manual", timedelta(days=0), "blocked"),
        }
        assert Suppression.objects.get(address="anna@xn--bcher-kva.example").pk == kept.pk  # the keyed row stays

        # What the merged rows said is in the audit, on the row that stays.
        events = AuditEvent.objects.order_by("id")[audits_before:]
        anna = [e.detail for e in events if e.target_id == str(kept.pk)]
        assert len(anna) == 3  # two rows merged into it, and its own reason, date and note changed
        assert any("'anna@bücher.example' (bounced" in d and "550 5.1.1 no such user" in d for d in anna)
        assert any("'\"anna\"@bücher.example.' (manual" in d and "asked by phone" in d for d in anna)
        assert any(d.startswith("now 'anna@xn--bcher-kva.example' (bounced") and "unsubscribe link" in d for d in anna)
        assert {e.actor_name for e in events} == {"migration 0022_suppression_keys"}
        assert not [e for e in events if "bob@" in e.detail or "eve smith" in e.detail]
        assert [e.action for e in events if "cy@" in e.detail] == ["re-key suppression"]

        # The unique key holds the mailbox now: another spelling cannot be added beside it.
        assert Suppression.objects.add("Anna@Bücher.example", "unsubscribed")[1] is False
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_going_back_changes_nothing():
    _migrate(BEFORE)
    _migrate(AFTER)
    Suppression.objects.create(address="anna@bücher.example", reason="bounced")
    try:
        _migrate(BEFORE)
        assert list(Suppression.objects.values_list("address", flat=True)) == ["anna@xn--bcher-kva.example"]
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
