"""Who did what, and when: the record each action leaves (DESIGN: history is append-only).

`record` writes one AuditEvent, and every AuditEvent is written by it (or, for
a CSV import's thousands, by `record_many`). The comm panel's views, the
admin's actions and forms (through AuditedAdmin, which hooks the admin's own
change log) and mailgate's moderation call it for what a person did; a
request's own history goes through it too, with its `kind`: a failed expansion
(dbmail.intake.expand, by dbmail_cron), the reputation guard's pause
(dbmail.track.guard, by dbmail_track), a resume (guard.resume), a retry,
recorded by the panel, admin or API view that called MessageRequest.retry,
and a cancel, which MessageRequest.cancel records itself (through
AuditEvent.objects.record, the writer behind this one: the models import no
logic), so one from a shell is in the history too: each step once. Nothing ever updates or deletes an AuditEvent
(the model, its queryset and the database refuse). An email's own history (its
DeliveryEvents) also names the person who cancelled or retried it
(dbmail.models.TextOfEmail.cancel and retry_now).
"""

from django.contrib import admin
from django.contrib.auth import get_permission_codename

from dbmail.models import AuditEvent, actor_name

# The programs named as the actor of what no person did.
CRON = "dbmail_cron"
GUARD = "dbmail_track (reputation guard)"


def record(user, action, target, *, detail="", request=None, kind="", by="", at=None):
    """One AuditEvent: `user` (or, with no user, the program `by`) did `action` to `target`. Returns it.

    `kind` marks a step of a request's history (AuditEvent.Kind); its detail is kept whole, line
    breaks and all (a failure's traceback), where a person's action's detail is one line.
    """
    return AuditEvent.objects.record(user, action, target, detail=detail, request=request, kind=kind, by=by, at=at)


def program_step(program, kind, request, detail, at=None):
    """A step of `request`'s history taken by a program, not a person (`program`: CRON, GUARD)."""
    return record(None, kind.label, request, detail=detail, kind=kind, by=program, at=at)


def for_target(obj):
    """The AuditEvents about `obj`, oldest first."""
    return AuditEvent.objects.filter(target_type=obj._meta.label_lower, target_id=str(obj.pk)).order_by("at", "id")


class ActPermission:
    """A ModelAdmin mixin: actions marked `permissions=["act"]` are for staff holding the model's change permission.

    Django offers an action without `permissions` to whoever may view the change list. The
    actions of a read-only page change things all the same (approve a held post, resume a
    paused request, apply tracking events), and such a page's has_change_permission is always
    False, so ["change"] would hide them from everyone: this asks for the permission itself.
    """

    def has_act_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename('change', self.opts)}")


class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose adds, changes and deletions each leave an AuditEvent (beside Django's LogEntry)."""

    def log_addition(self, request, obj, message):
        record(request.user, "add (admin)", obj, detail=_change_text(message))
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        record(request.user, "change (admin)", obj, detail=_change_text(message))
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            record(request.user, "delete (admin)", obj)
        return super().log_deletions(request, queryset)


def _change_text(message):
    """The admin's change message (a JSON list, or text) as words: which fields changed."""
    if isinstance(message, list):
        fields = [", ".join(part.get("changed", {}).get("fields", [])) for part in message if "changed" in part]
        return "; ".join(f for f in fields if f) or ("added" if any("added" in part for part in message) else "")
    return str(message or "")


def record_many(user, action, targets, *, detail=""):
    """One AuditEvent per target, written together (a CSV import of thousands of rows). Returns how many."""
    name = actor_name(user)
    events = [
        AuditEvent(
            actor=user if name else None,
            actor_name=name or "(unknown)",
            action=action[:50],
            target_type=target._meta.label_lower,
            target_id=str(target.pk or "")[:64],
            target=str(target)[:300],
            detail=" ".join(str(detail).split())[:5000],
        )
        for target in targets
    ]
    AuditEvent.objects.bulk_create(events, batch_size=1000)
    return len(events)
