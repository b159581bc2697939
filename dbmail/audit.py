"""Who did what, and when: the record each action a person takes leaves (DESIGN: history is append-only).

`record` writes one AuditEvent. The comm panel's views, the admin's actions
and forms (through AuditedAdmin, which hooks the admin's own change log) and
mailgate's moderation call it; nothing ever updates or deletes an AuditEvent.
An email's own history (its DeliveryEvents) also names the person who
cancelled or retried it (dbmail.models.TextOfEmail.cancel and retry_now).
"""

from django.contrib import admin

from dbmail.models import AuditEvent, MessageRequest, TextOfEmail


def actor_name(user):
    return user.get_username() if user is not None and getattr(user, "is_authenticated", False) else ""


def record(user, action, target, *, detail="", request=None):
    """One AuditEvent: `user` did `action` to `target` (a model instance). Returns it."""
    if request is None:
        if isinstance(target, MessageRequest):
            request = target
        elif isinstance(target, TextOfEmail) and target.request_id:
            request = target.request
    name = actor_name(user)
    return AuditEvent.objects.create(
        actor=user if name else None,
        actor_name=name or "(unknown)",
        action=action[:50],
        target_type=target._meta.label_lower,
        target_id=str(target.pk or "")[:64],
        target=str(target)[:300],
        request=request if request is not None and request.pk else None,
        detail=" ".join(str(detail).split())[:5000],
    )


def for_target(obj):
    """The AuditEvents about `obj`, oldest first."""
    return AuditEvent.objects.filter(target_type=obj._meta.label_lower, target_id=str(obj.pk)).order_by("at", "id")


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
