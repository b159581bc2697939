"""A request's history joins the audit: every RequestEvent becomes an AuditEvent, and RequestEvent goes.

Each RequestEvent is copied with its time, kind, user and text, oldest first, so the request
page's order stays what it was. A cancel or a resume was written both ways before (a
RequestEvent by the model, an AuditEvent by the screen that asked): its AuditEvent twin (same
request, same person, the matching action, written within a minute after) is given the kind and
stands for both, so the page still shows it once. The kind is a new column: filling it on those
rows is part of making it, before the trigger below exists.

Then AuditEvent becomes append-only in the database as well as in the model: a trigger refuses
every UPDATE and DELETE except the foreign keys' SET NULL when a user or a draft request is
deleted. Going back recreates a RequestEvent for every AuditEvent with a kind and a request, and
removes the AuditEvents that were only copies (their action is their kind's name).
"""

from datetime import timedelta

from django.apps import apps as global_apps
from django.conf import settings
from django.db import migrations, models

PROGRAMS = {"pause": "dbmail_track (reputation guard)"}  # everything else no person did: dbmail_cron
LABELS = {
    "failure": "expansion failed",
    "retry": "retried",
    "cancel": "cancelled by hand",
    "pause": "paused by the reputation guard",
    "resume": "resumed",
}
# The actions the panel, the admin and the API recorded beside the model's cancel and resume.
TWIN_ACTIONS = {"cancel": ("cancel", "cancel (API)", "discard draft"), "resume": ("resume",)}
TWIN_WINDOW = timedelta(minutes=1)


def copy_events(apps, schema_editor):
    RequestEvent = apps.get_model("dbmail", "RequestEvent")
    AuditEvent = apps.get_model("dbmail", "AuditEvent")
    MessageRequest = apps.get_model("dbmail", "MessageRequest")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    username = global_apps.get_model(settings.AUTH_USER_MODEL).USERNAME_FIELD  # a historical model lacks it
    db = schema_editor.connection.alias
    names = dict(User.objects.using(db).values_list("pk", username))
    subjects = dict(MessageRequest.objects.using(db).values_list("pk", "subject"))
    twins = {}
    for twin in (
        AuditEvent.objects.using(db)
        .filter(target_type="dbmail.messagerequest", request__isnull=False, kind="")
        .order_by("at", "id")
    ):
        twins.setdefault(twin.request_id, []).append(twin)
    copies, kinds = [], {}
    for event in RequestEvent.objects.using(db).order_by("at", "id").iterator():
        twin = _twin(event, twins.get(event.request_id, ()))
        if twin is not None:
            kinds[twin.pk] = event.kind
            continue
        copies.append(
            AuditEvent(
                at=event.at,
                actor_id=event.user_id,
                actor_name=names.get(event.user_id) or PROGRAMS.get(event.kind, "dbmail_cron"),
                action=LABELS.get(event.kind, event.kind)[:50],
                target_type="dbmail.messagerequest",
                target_id=str(event.request_id),
                target=f"#{event.request_id} {subjects.get(event.request_id, '')[:60]}"[:300],
                request_id=event.request_id,
                detail=event.text,
                kind=event.kind,
            )
        )
    AuditEvent.objects.using(db).bulk_create(copies, batch_size=1000)  # ids in the events' order
    for pk, kind in kinds.items():
        AuditEvent.objects.using(db).filter(pk=pk).update(kind=kind)
    if RequestEvent.objects.using(db).count() != len(copies) + len(kinds):
        raise RuntimeError("0020_events: not every RequestEvent was copied; nothing was changed")


def _twin(event, candidates):
    """The panel's, admin's or API's AuditEvent for the same cancel or resume (taken off the list), or None."""
    actions = TWIN_ACTIONS.get(event.kind)
    if not actions:
        return None
    for i, twin in enumerate(candidates):
        if (
            twin.action in actions
            and twin.actor_id == event.user_id
            and twin.actor_id is not None
            and event.at <= twin.at <= event.at + TWIN_WINDOW
        ):
            return candidates.pop(i)
    return None


def restore_events(apps, schema_editor):
    RequestEvent = apps.get_model("dbmail", "RequestEvent")
    AuditEvent = apps.get_model("dbmail", "AuditEvent")
    db = schema_editor.connection.alias
    history = AuditEvent.objects.using(db).exclude(kind="").filter(request__isnull=False).order_by("at", "id")
    RequestEvent.objects.using(db).bulk_create(
        (
            RequestEvent(request_id=e.request_id, at=e.at, kind=e.kind, user_id=e.actor_id, text=e.detail)
            for e in history.iterator()
        ),
        batch_size=1000,
    )
    # Only the copies go: an action of a person's that stood for both ways stays in the audit.
    copies = models.Q()
    for kind, label in LABELS.items():
        copies |= models.Q(kind=kind, action=label)
    AuditEvent.objects.using(db).filter(copies, request__isnull=False).delete()


APPEND_ONLY = """
CREATE FUNCTION dbmail_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    -- Deleting a user or a draft request sets its foreign key to NULL here: that alone may pass.
    IF TG_OP = 'UPDATE'
        AND (NEW.actor_id IS NULL OR NEW.actor_id IS NOT DISTINCT FROM OLD.actor_id)
        AND (NEW.request_id IS NULL OR NEW.request_id IS NOT DISTINCT FROM OLD.request_id)
        AND to_jsonb(NEW) - 'actor_id' - 'request_id' = to_jsonb(OLD) - 'actor_id' - 'request_id'
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'dbmail_auditevent is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER dbmail_auditevent_append_only BEFORE UPDATE OR DELETE ON dbmail_auditevent
    FOR EACH ROW EXECUTE FUNCTION dbmail_auditevent_append_only();
"""
DROP_APPEND_ONLY = """
DROP TRIGGER IF EXISTS dbmail_auditevent_append_only ON dbmail_auditevent;
DROP FUNCTION IF EXISTS dbmail_auditevent_append_only();
"""


def add_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND_ONLY, params=None)  # the SQL's % is RAISE's, not a parameter


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_APPEND_ONLY, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("dbmail", "0019_expand"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="kind",
            field=models.CharField(
                blank=True,
                choices=[
                    ("failure", "expansion failed"),
                    ("retry", "retried"),
                    ("cancel", "cancelled by hand"),
                    ("pause", "paused by the reputation guard"),
                    ("resume", "resumed"),
                ],
                default="",
                help_text="For a step in a request's history: which (failure, retry, cancel, pause, resume).",
                max_length=16,
            ),
        ),
        migrations.RunPython(copy_events, restore_events),
        migrations.DeleteModel(
            name="RequestEvent",
        ),
        migrations.RunPython(add_trigger, drop_trigger),
    ]
