"""The suppression list re-keyed: each row's address becomes its mailbox's key.

Before, rows held the address lower-cased as someone wrote it, so
anna@bücher.example, anna@xn--bcher-kva.example and "anna"@bücher.example.
were three rows, and each stopped only its own spelling. Now each is keyed
by dbmail.content.addresses.mailbox_key, the rule every writer and check uses.

Rows whose keys collide become one: the strongest reason (complaint, hard
bounce, blocked by hand, unsubscribe: the first three stop all mail, an
unsubscribe bulk mail only, so a block by hand must not give way to an
unsubscribe) and the earliest date. What the other rows said is not lost:
each re-keyed or merged row leaves an AuditEvent on the row that stays,
naming the spelling, reason, date and note it had. Going back changes
nothing: the keys are the same mailboxes, and the spellings are in the audit.
"""

from django.db import migrations, models

from dbmail.content.addresses import mailbox_key

# Lower is stronger; unknown reasons (none exist today) rank last.
STRENGTH = {"complained": 0, "bounced": 1, "manual": 2, "unsubscribed": 3}
ACTOR = "migration 0022_suppression_keys"
CHUNK = 2000


def _described(row):
    note = f": {row.note}" if row.note else ""
    return f"#{row.pk} {row.address!r} ({row.reason}, {row.created_at.isoformat()}{note})"


def rekey(apps, schema_editor):
    Suppression = apps.get_model("dbmail", "Suppression")
    AuditEvent = apps.get_model("dbmail", "AuditEvent")
    field = Suppression._meta.get_field("address")
    moved = {}  # key -> pks of the rows whose address is not their key yet
    for pk, address in Suppression.objects.values_list("pk", "address").iterator(chunk_size=CHUNK):
        key = mailbox_key(address)
        if key != address and len(key) <= field.max_length:  # a longer key was never a deliverable address
            moved.setdefault(key, []).append(pk)
    keys = list(moved)
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        pks = [pk for key in chunk for pk in moved[key]]
        rows = {}
        for row in Suppression.objects.filter(models.Q(pk__in=pks) | models.Q(address__in=chunk)):
            rows.setdefault(mailbox_key(row.address), []).append(row)
        events, gone, kept = [], [], []
        for key in chunk:
            events += _merge(AuditEvent, key, rows[key], gone, kept)
        # One DELETE and one UPDATE a chunk: the rows merged away go first, so each key is free for its row.
        Suppression.objects.filter(pk__in=gone).delete()
        Suppression.objects.bulk_update(kept, ["address", "reason", "note", "created_at"], batch_size=CHUNK)
        AuditEvent.objects.bulk_create(events, batch_size=CHUNK)


def _merge(AuditEvent, key, group, gone, kept_rows):
    """Make `group` (the rows of one mailbox) one row keyed `key`; the AuditEvents that say what happened.

    The pks of the rows to delete go on `gone`, the row that stays (changed) on `kept_rows`.
    """
    strongest = min(group, key=lambda r: (STRENGTH.get(r.reason, len(STRENGTH)), r.created_at, r.pk))
    # The row already keyed stays (its id, which audit events name, is kept); else the strongest one.
    kept = next((r for r in group if r.address == key), strongest)
    others = [r for r in group if r.pk != kept.pk]
    events = [
        AuditEvent(
            actor_name=ACTOR,
            action="merge suppression",
            target_type="dbmail.suppression",
            target_id=str(kept.pk),
            target=f"{key} ({strongest.reason})"[:300],
            detail=f"merged into #{kept.pk} ({key}): {_described(row)}"[:5000],
        )
        for row in others
    ]
    earliest = min(r.created_at for r in group)
    now = (key, strongest.reason, strongest.note, earliest)
    if (kept.address, kept.reason, kept.note, kept.created_at) != now:
        events.append(
            AuditEvent(
                actor_name=ACTOR,
                action="re-key suppression",
                target_type="dbmail.suppression",
                target_id=str(kept.pk),
                target=f"{key} ({strongest.reason})"[:300],
                detail=f"now {key!r} ({strongest.reason}, {earliest.isoformat()}); was {_described(kept)}"[:5000],
            )
        )
    gone.extend(r.pk for r in others)
    kept.address, kept.reason, kept.note, kept.created_at = now
    kept_rows.append(kept)
    return events


class Migration(migrations.Migration):
    dependencies = [("dbmail", "0021_event_email")]

    operations = [
        migrations.AlterField(
            model_name="suppression",
            name="address",
            field=models.CharField(
                help_text="Stored as the mailbox's key: lower-case, the domain in A-labels.",
                max_length=254,
                unique=True,
            ),
        ),
        migrations.RunPython(rekey, migrations.RunPython.noop, elidable=False),
    ]
