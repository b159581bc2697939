from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F, Q, Value
from django.db.models.functions import Greatest
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import escape

from dbmail import audit, states
from dbmail.audit import ActPermission, AuditedAdmin
from dbmail.content import domains, lifting, recipients, variables
from dbmail.content.addresses import key_fragment
from dbmail.content.validation import RequestForm
from dbmail.exceptions import DkimError
from dbmail.intake import expand
from dbmail.models import (  # the XML spool
    AuditEvent,
    CronHeartbeat,
    DeliveryEvent,
    DestinationLimit,
    DkimKey,
    MessageRequest,
    PacingBucket,
    QueueTableItem,
    SenderAccount,
    SendGrant,
    SendingProblem,
    SpoolFile,
    SpoolItem,
    Suppression,
    TextOfEmail,
    TrackingQueueItem,
    UnmatchedTrackingEvent,
    UnsignedMail,
)
from dbmail.ops import dkimkeys
from dbmail.send import backoff, caps, destinations, limits
from dbmail.track import guard
from dbmail.track.apply import retry_unmatched


class ReadOnly:
    """Pages that are a record, not a form: written by the commands, the gate and the actions, never by
    hand, whatever permissions a staff user holds. Rows may still be deleted, by whoever may delete them,
    unless `deletable` is off (history, which is only ever added to)."""

    deletable = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return self.deletable and super().has_delete_permission(request, obj)


class ReadOnlyAdmin(ReadOnly, admin.ModelAdmin):
    pass


class HistoryAdmin(ReadOnlyAdmin):
    deletable = False


class HistoryInline(ReadOnly, admin.TabularInline):
    deletable = False
    extra = 0
    can_delete = False


class SenderAccountForm(forms.ModelForm):
    # The stored password is never shown; leaving the field empty keeps it.
    smtp_password = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), help_text="Leave empty to keep the current one."
    )

    class Meta:
        model = SenderAccount
        fields = "__all__"  # noqa: DJ007  (the admin edits every field of an account)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "warmup_factor" in self.fields:  # not for a holder of only the view permission: every field is read-only
            self.fields["warmup_factor"].required = False  # left empty: the usual 1.5

    def clean_smtp_password(self):
        return self.cleaned_data["smtp_password"] or (self.instance.smtp_password if self.instance.pk else "")

    def clean_warmup_factor(self):
        factor = self.cleaned_data.get("warmup_factor")
        return SenderAccount._meta.get_field("warmup_factor").default if factor is None else factor


@admin.register(SenderAccount)
class SenderAccountAdmin(AuditedAdmin):
    form = SenderAccountForm
    list_display = ["address", "display_name", "active", "smtp_host", "daily_cap", "cap_today"]
    list_filter = ["active"]
    search_fields = ["address", "display_name"]
    change_list_template = "admin/dbmail/dns_check_link_change_list.html"

    @admin.display(description="Today (UTC): taken / cap")
    def cap_today(self, obj):
        cap, taken = caps.usage(obj, timezone.now())
        return "-" if cap is None else f"{taken} / {cap}"


class HeldFilter(admin.SimpleListFilter):
    """Mail of an inactive sender account: waiting, never claimed, until the account is active again."""

    title = "held (inactive sender account)"
    parameter_name = "held"

    def lookups(self, request, model_admin):
        return [("yes", "held"), ("no", "not held")]

    def queryset(self, request, queryset):
        if self.value() not in ("yes", "no"):
            return queryset
        if queryset.model is MessageRequest:
            held = Q(status__in=states.REQUEST_TO_EXPAND, sender__active=False)
        else:
            held = Q(status__in=states.WAITING, account__active=False)
        return queryset.filter(held) if self.value() == "yes" else queryset.exclude(held)


class RequestHistoryInline(HistoryInline):
    """The request's history, oldest first: its failures and pauses, and who cancelled, retried or resumed it."""

    model = AuditEvent
    fk_name = "request"
    fields = readonly_fields = ["at", "actor_name", "action", "kind", "detail"]
    ordering = ["at", "id"]
    verbose_name = "history event"
    verbose_name_plural = "request history"


@admin.register(SendGrant)
class SendGrantAdmin(AuditedAdmin):
    """Who may send as which address through the site's server; a grant is made or removed, never rewritten."""

    list_display = ["address", "user", "group", "granted_by", "granted_at", "note"]
    list_filter = ["group"]
    search_fields = ["address", "user__username", "user__email", "group__name", "note"]
    readonly_fields = ["granted_by", "granted_at"]
    raw_id_fields = ["user"]

    def get_readonly_fields(self, request, obj=None):
        # Changing who or what a grant covers would leave granted_by/at naming a grant nobody made.
        return [*self.readonly_fields, *(["address", "user", "group"] if obj else [])]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.granted_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(MessageRequest)
class MessageRequestAdmin(AuditedAdmin):
    """Drafts are edited here; once queued a request is history: read-only, changed only by the actions."""

    form = RequestForm  # the recipient set and the templates are checked too
    list_display = [
        "id",
        "subject",
        "sender",
        "recipient_set",
        "state",
        "send_at",
        "recipient_count",
        "progress",
        "delivery",
        "short_failure",
    ]
    list_filter = ["status", HeldFilter, "recipient_set", "sender"]
    list_select_related = ["sender"]
    search_fields = ["subject", "creator__username"]
    date_hierarchy = "created_at"
    # body_format is the comm panel's editor choice; the admin edits the bodies as they are sent.
    readonly_fields = [
        "body_format",
        "state",
        "failure",
        "failed_at",
        "paused_reason",
        "paused_at",
        "recipient_count",
        "expanded_at",
        "checkpoint",
        "progress",
        "delivery",
    ]
    inlines = [RequestHistoryInline]
    actions = ["cancel_requests", "queue_now", "retry_failed", "resume_paused"]

    @admin.display(description="Status", ordering="status")
    def state(self, obj):
        return obj.shown_status() if obj.sender_id else obj.status

    @admin.display(description="Why it failed")
    def short_failure(self, obj):
        return obj.failure[:120] or "-"

    @admin.action(
        description="Retry failed requests (back to queued; expansion resumes from its checkpoint)",
        permissions=["change"],
    )
    def retry_failed(self, request, queryset):
        retried, refused = 0, []
        for message_request in queryset.filter(status__in=states.RETRY_REQUEST.sources).select_related("sender"):
            problem = expand.obvious_problem(message_request)
            if problem:
                refused.append(f"#{message_request.pk}: {problem}")
            elif text := message_request.retry(user=request.user):
                kind = AuditEvent.Kind.RETRY
                audit.record(request.user, "retry (admin)", message_request, detail=text, kind=kind)
                retried += 1
        self.message_user(request, f"{retried} failed request(s) queued again.", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not retried, they would fail again: " + "; ".join(refused), messages.ERROR)

    @admin.action(
        description="Resume paused requests (the reputation guard then judges only the mail sent since)",
        permissions=["change"],
    )
    def resume_paused(self, request, queryset):
        resumed = 0
        for message_request in queryset.filter(status=states.PAUSE_REQUEST.target):
            if guard.resume(message_request, user=request.user, action="resume (admin)"):
                resumed += 1
        self.message_user(request, f"{resumed} paused request(s) resumed.", messages.SUCCESS)

    @admin.display(description="Progress")
    def progress(self, obj):
        counts = obj.status_counts()
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"

    @admin.display(description="Delivered / bounced / complained")
    def delivery(self, obj):
        return " / ".join(str(n) for n in obj.tracking_counts().values())

    def get_inlines(self, request, obj=None):
        return self.inlines if obj else []  # a new request has no history yet

    def get_fields(self, request, obj=None):
        # One "Status" row: a new request's choice (draft or queued), else the status as shown (with held).
        hidden = "state" if obj is None else "status"
        return [f for f in super().get_fields(request, obj) if f != hidden]

    def has_change_permission(self, request, obj=None):
        # Once queued a request is a view here, with no Save (that would write the row back as it was read
        # while dbmail_cron moves it on); the actions still move it along dbmail.states.
        if obj is not None and obj.status != states.RequestStatus.DRAFT:
            return False
        return super().has_change_permission(request, obj)

    def get_readonly_fields(self, request, obj=None):
        # Once made, a request changes state only along dbmail.states: the actions below and dbmail_cron
        # (a queued one has no change permission here at all: every field is shown read-only).
        return self.readonly_fields if obj is None else [*self.readonly_fields, "status"]

    def has_delete_permission(self, request, obj=None):
        # A sent request's deletion would take its emails and their delivery log with it; drafts only,
        # one at a time (no bulk delete of a mixed selection).
        return (
            obj is not None and obj.status == states.RequestStatus.DRAFT and super().has_delete_permission(request, obj)
        )

    def formfield_for_choice_field(self, db_field, request, **kwargs):
        if db_field.name == "status":  # a new request starts as a draft or queued, nothing else
            kwargs["choices"] = [
                (t.target, t.target.label) for t in (states.REQUEST_CREATE_DRAFT, states.REQUEST_CREATE)
            ]
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def get_changeform_initial_data(self, request):
        # A new request starts as a draft, as in the comm panel: saving it is not yet sending it to everyone.
        return {"status": states.REQUEST_CREATE_DRAFT.target, **super().get_changeform_initial_data(request)}

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "recipient_set" and field is not None:  # a free text box: say what it takes
            sets = [
                f"{s.name} ({s.label}{', parameters ' + s.params_help if s.params_help else ''})"
                for s in recipients.registered_sets()
            ]
            field.help_text = escape("One of: " + "; ".join(sets) + ".")  # the admin prints help text unescaped
        return field

    def save_model(self, request, obj, form, change):
        if not obj.creator_id:
            obj.creator = request.user
        super().save_model(request, obj, form, change)
        # Saved all the same, as in the comm panel: the request page there lists them too.
        for warning in variables.warnings_for(obj):
            self.message_user(request, f"Saved, but {warning}", messages.WARNING)

    @admin.action(description="Cancel (unsent emails become cancelled)", permissions=["change"])
    def cancel_requests(self, request, queryset):
        live = list(queryset.filter(status__in=states.CANCEL_REQUEST.sources))
        for message_request in live:
            message_request.cancel(actor=request.user, via="admin")  # its history records the step
        self.message_user(request, f"Cancelled {len(live)} request(s).", messages.SUCCESS)

    @admin.action(description="Send now (drafts and scheduled requests)", permissions=["change"])
    def queue_now(self, request, queryset):
        now = timezone.now()
        moved = list(queryset.filter(status__in=states.SEND_NOW.sources))
        n = states.SEND_NOW.update(MessageRequest.objects.filter(pk__in=[r.pk for r in moved]), send_at=now)
        for message_request in moved:
            audit.record(request.user, "send now", message_request, detail="queued to go out now (admin)")
        self.message_user(request, f"{n} request(s) will go out on the next dbmail_cron run.", messages.SUCCESS)


class DeliveryEventInline(HistoryInline):
    """An email's delivery log: read-only, nothing added or removed by hand."""

    model = DeliveryEvent
    fields = readonly_fields = ["at", "kind", "smtp_code", "outcome", "text", "actor_name"]


@admin.register(TextOfEmail)
class TextOfEmailAdmin(ActPermission, HistoryAdmin):
    """Read-only: an email changes only by sending, tracking and the cancel and retry actions (each logged).
    Emails are made by expansion and the outbox, never typed in; dbmail_purge removes old ones."""

    list_display = ["id", "to_address", "subject", "state", "attempts", "next_attempt_at", "sent_at", "short_error"]
    list_filter = ["status", HeldFilter, "account"]
    search_fields = ["to_address", "message_id", "subject"]
    exclude = ["raw_message"]
    inlines = [DeliveryEventInline]
    actions = ["cancel_emails", "retry_emails"]
    list_select_related = ["request", "account"]

    @admin.display(description="Status", ordering="status")
    def state(self, obj):
        return obj.shown_status()

    @admin.display(description="Last error")
    def short_error(self, obj):
        return obj.last_error[:80]

    @admin.action(description="Cancel (queued and deferred only)", permissions=["act"])
    def cancel_emails(self, request, queryset):
        n = TextOfEmail.cancel(queryset, actor=request.user)
        self._record(request, "cancel", queryset, n)
        self.message_user(request, f"Cancelled {n} email(s).", messages.SUCCESS)

    @admin.action(description="Retry now (deferred and dropped)", permissions=["act"])
    def retry_emails(self, request, queryset):
        n = TextOfEmail.retry_now(queryset, actor=request.user)
        self._record(request, "retry", queryset, n)
        self.message_user(request, f"{n} email(s) queued for the next run.", messages.SUCCESS)

    def _record(self, request, action, queryset, n):
        for email in queryset.select_related("request")[:100]:
            audit.record(request.user, action, email, detail=f"admin action on {n} email(s)")


@admin.register(DeliveryEvent)
class DeliveryEventAdmin(HistoryAdmin):
    """The delivery log, append-only: written by sending, tracking and the actions, never by hand."""

    list_display = ["at", "email", "kind", "smtp_code", "outcome", "actor_name", "text"]
    list_filter = ["kind", "outcome"]
    search_fields = ["email__to_address", "email__message_id"]
    raw_id_fields = ["email"]


@admin.register(AuditEvent)
class AuditEventAdmin(HistoryAdmin):
    """Who did what and when: read-only, for everyone with view permission, never changed."""

    list_display = ["at", "actor_name", "action", "target_type", "target", "detail"]
    list_filter = ["action", "target_type"]
    search_fields = ["actor_name", "target", "target_id", "detail"]
    date_hierarchy = "at"


@admin.register(Suppression)
class SuppressionAdmin(AuditedAdmin):
    """Deleting a suppression lifts it: the address gets mail again."""

    list_display = ["address", "reason", "stops", "note", "created_at"]
    list_filter = ["reason"]
    search_fields = ["address"]

    def get_search_results(self, request, queryset, search_term):
        # The list holds mailbox keys (domains in A-labels): a search in another spelling finds them too.
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if search_term.strip():
            found |= queryset.filter(address__icontains=key_fragment(search_term))
        return found, duplicates

    @admin.display(description="Stops")
    def stops(self, obj):
        return obj.stops

    def get_readonly_fields(self, request, obj=None):
        # Changing a protected row's address or reason lifts it (dbmail.content.lifting): the deleters' right.
        if obj is not None and not lifting.may_lift(request.user, obj):
            return [*super().get_readonly_fields(request, obj), *lifting.LIFTING_FIELDS]
        return super().get_readonly_fields(request, obj)

    def log_deletions(self, request, queryset):
        # One "unsuppress" event per lifted row, as the comm panel's Remove writes, with what it was.
        for row in queryset:
            audit.record(request.user, "unsuppress (admin)", row, detail=f"was {row.reason}: {row.note}")
        return admin.ModelAdmin.log_deletions(self, request, queryset)


# --- DKIM keys and the DNS check ---


class DkimKeyAddForm(forms.ModelForm):
    """Adding a key is making one: the key pair is generated (dbmail.ops.dkimkeys), never typed in."""

    selector = forms.CharField(required=False, help_text="Leave empty for s<YYYYMM> (rsa) or e<YYYYMM> (ed25519).")
    bits = forms.TypedChoiceField(
        choices=[(n, n) for n in dkimkeys.RSA_BITS], coerce=int, initial=2048, help_text="RSA only."
    )

    class Meta:
        model = DkimKey
        fields = ["domain", "selector", "algorithm"]

    def clean(self):
        data = super().clean()
        try:
            data["domain"] = dkimkeys.clean_domain(data.get("domain"))
            dkimkeys.can_add(data["domain"], data.get("selector") or None)
        except DkimError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return data

    def save(self, commit=True):
        data = self.cleaned_data
        self.instance = dkimkeys.generate(
            data["domain"], selector=data.get("selector") or None, algorithm=data["algorithm"], bits=data["bits"]
        )
        self.save_m2m = lambda: None
        return self.instance


@admin.register(DkimKey)
class DkimKeyAdmin(AuditedAdmin):
    """Keys are made (add), shown with the DNS record to publish, and retired; the private key never appears."""

    list_display = ["domain", "selector", "algorithm", "state", "created_at", "retired_at"]
    list_filter = ["active", "algorithm"]
    search_fields = ["domain", "selector"]
    readonly_fields = ["domain", "selector", "algorithm", "state", "created_at", "retired_at", "dns_record"]
    actions = ["retire_keys"]
    change_list_template = "admin/dbmail/dns_check_link_change_list.html"

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = DkimKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["domain", "selector", "algorithm", "bits"]
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def save_model(self, request, obj, form, change):
        pass  # the add form's save() made and stored the key; a made key is never edited

    def has_delete_permission(self, request, obj=None):
        return False  # retired instead: which key signed what stays known

    @admin.display(description="State")
    def state(self, obj):
        if not obj.active:
            return "retired"
        newest = dkimkeys.active_keys(obj.domain)
        return "signs" if newest and newest[0].pk == obj.pk else "published (no longer signs)"

    @admin.display(description="DNS record to publish")
    def dns_record(self, obj):
        return dkimkeys.zone_line(obj) if obj.active else "(retired: remove its record from DNS)"

    @admin.action(description="Retire (stop signing and publishing)", permissions=["change"])
    def retire_keys(self, request, queryset):
        retired = 0
        for key in queryset.filter(active=True):
            audit.record(request.user, "retire DKIM key", dkimkeys.retire(key.domain, key.selector))
            retired += 1
        self.message_user(request, f"Retired {retired} key(s); remove their TXT records from DNS.", messages.SUCCESS)

    def get_urls(self):
        return [
            path("dns-check/", self.admin_site.admin_view(self.dns_check_view), name="dbmail_dns_check"),
            *super().get_urls(),
        ]

    def dns_check_view(self, request):
        """SPF, DKIM and DMARC of every sender domain (or of ?domain=), as DNS has them now."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        wanted = request.GET.get("domain", "").strip().lower()
        names = domains.sender_domains()
        context = {
            **self.admin_site.each_context(request),
            "title": "DNS check",
            "opts": self.model._meta,
            "domains": names,
            "wanted": wanted,
            "reports": [],
        }
        # Here, not at the top: every web worker and `manage.py check` imports this module
        # (mailsite/adminconfig.py), and only this page needs the DNS check.
        from dbmail.ops import dnscheck

        try:
            context["reports"] = [dnscheck.check(name) for name in ([wanted] if wanted else names)]
        except DkimError as exc:
            context["error"] = str(exc)
        return TemplateResponse(request, "admin/dbmail/dns_check.html", context)


@admin.register(UnsignedMail)
class UnsignedMailAdmin(ReadOnlyAdmin):
    """Emails sent without a DKIM signature, per From domain and day (their domain has no key)."""

    list_display = ["day", "domain", "count"]
    list_filter = ["domain"]
    date_hierarchy = "day"


@admin.register(SendingProblem)
class SendingProblemAdmin(ReadOnlyAdmin):
    """Written by the sender (dbmail.send.problems); read here and by dbmail_status."""

    list_display = ["server", "account", "stage", "smtp_code", "text", "emails_deferred", "last_seen_at", "resolved_at"]
    list_filter = ["stage", ("resolved_at", admin.EmptyFieldListFilter)]


@admin.register(CronHeartbeat)
class CronHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["command", "host", "last_started_at", "last_success_at", "last_error"]


# --- Comm panel models -----------------------------------------------------------------------
from dbmail.models import EmailTemplate, RequestAttachment  # noqa: E402


@admin.register(EmailTemplate)
class EmailTemplateAdmin(AuditedAdmin):
    list_display = ["name", "subject", "updated_at", "updated_by"]
    search_fields = ["name", "subject"]
    readonly_fields = ["body_format", "updated_by", "updated_at"]


@admin.register(RequestAttachment)
class RequestAttachmentAdmin(AuditedAdmin):
    """Files are added in the comm panel; here they can be changed or removed only while their request is a draft."""

    list_display = ["filename", "request", "content_type", "size"]
    search_fields = ["filename"]
    raw_id_fields = ["request"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return _draft(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return obj is not None and _draft(obj) and super().has_delete_permission(request, obj)


def _draft(attachment):
    return attachment is None or attachment.request.status == states.RequestStatus.DRAFT


# --- XML spool (seed 003) ---


class SpoolItemInline(admin.TabularInline):
    model = SpoolItem
    extra = 0
    can_delete = False
    fields = readonly_fields = ["position", "fld_time", "email", "email_status"]

    @admin.display(description="Status")
    def email_status(self, obj):
        return obj.email.status

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(SpoolFile)
class SpoolFileAdmin(ReadOnlyAdmin):
    """Read-only: files are taken in and moved by dbmail_cron; their emails are ordinary outbox rows."""

    list_display = ["name", "status", "received_at", "settled_at", "location", "short_reason"]
    list_filter = ["status"]
    search_fields = ["name", "sha256"]
    date_hierarchy = "received_at"
    inlines = [SpoolItemInline]

    @admin.display(description="Reason")
    def short_reason(self, obj):
        return obj.reason[:80]


# --- The table queue (seed 003, SOWASQL) ---


@admin.register(QueueTableItem)
class QueueTableItemAdmin(ReadOnlyAdmin):
    """Read-only: which row of which queue table each email came from, and the status last written to it."""

    list_display = ["table", "database", "row_id", "fld_time", "email", "email_status", "written", "settled_at"]
    list_filter = ["written", "table"]
    search_fields = ["email__to_address", "=row_id"]
    list_select_related = ["email"]
    raw_id_fields = ["email"]

    @admin.display(description="Status")
    def email_status(self, obj):
        return obj.email.status


# --- Delivery tracking ---


@admin.register(UnmatchedTrackingEvent)
class UnmatchedTrackingEventAdmin(ActPermission, ReadOnlyAdmin):
    """Tracking events for no email of ours, kept for inspection; the changelist count is the tally."""

    list_display = ["received_at", "reason", "event", "message_id", "recipient", "source", "error"]
    list_filter = ["reason", "event", "source"]
    search_fields = ["message_id", "recipient", "key"]
    date_hierarchy = "received_at"
    readonly_fields = [f.name for f in UnmatchedTrackingEvent._meta.fields]
    actions = ["apply_again"]

    @admin.action(description="Apply again (their email may exist now)", permissions=["act"])
    def apply_again(self, request, queryset):
        result = retry_unmatched(queryset)
        self.message_user(request, f"Applied {result.applied}; still unmatched {result.unmatched + result.invalid}.")


@admin.register(TrackingQueueItem)
class TrackingQueueItemAdmin(ReadOnlyAdmin):
    """The database backend of the tracking queue: what waits for dbmail_track."""

    list_display = ["id", "enqueued_at", "leased_until", "deliveries", "payload"]
    readonly_fields = [f.name for f in TrackingQueueItem._meta.fields]


class DestinationLimitForm(forms.ModelForm):
    class Meta:
        model = DestinationLimit
        fields = ["group", "rate_per_minute", "max_connections", "note"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        groups = destinations.current()  # the settings' groups: only their figures can be changed here
        self.fields["group"] = forms.ChoiceField(
            choices=[(g.name, f"{g.name} ({_limits_text(g)} in the settings)") for g in groups],
            help_text="The groups and their domains come from the settings (DBMAIL_DESTINATION_GROUPS).",
            disabled=bool(self.instance.pk),
        )
        self.fields["max_connections"].max_value = 1000
        self.fields["max_connections"].widget.attrs["max"] = 1000

    def clean_rate_per_minute(self):
        rate = self.cleaned_data.get("rate_per_minute")
        if rate is not None and rate < 0:
            raise forms.ValidationError("A rate is 0 or more (0: no limit; empty: as the settings say).")
        return rate

    def clean_max_connections(self):
        n = self.cleaned_data.get("max_connections")
        if n is not None and n > 1000:
            raise forms.ValidationError("At most 1000 (0: no limit; empty: as the settings say).")
        return n


def _limits_text(group):
    rate = f"{group.rate_per_minute:g} a minute" if group.rate_per_minute else "no rate limit"
    connections = f"{group.max_connections} connections" if group.max_connections else "any number of connections"
    return f"{rate}, {connections}"


@admin.register(DestinationLimit)
class DestinationLimitAdmin(AuditedAdmin):
    """Change a destination group's rate or connections for every host, or switch them off (0), without a restart."""

    form = DestinationLimitForm
    list_display = ["group", "rate_per_minute", "max_connections", "in_settings", "in_force", "note", "changed_at"]

    @admin.display(description="In the settings")
    def in_settings(self, obj):
        group = destinations.current().by_name.get(obj.group)
        return _limits_text(group) if group else "not a group of the settings: changes nothing"

    @admin.display(description="In force")
    def in_force(self, obj):
        group = limits.apply(destinations.current(), {obj.group: (obj.rate_per_minute, obj.max_connections)})
        return _limits_text(group.by_name[obj.group]) if obj.group in group.by_name else "-"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        limits.forget()  # this process at once; the others within DestinationLimit.REFRESH_SECONDS

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        limits.forget()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        limits.forget()


@admin.register(PacingBucket)
class PacingBucketAdmin(admin.ModelAdmin):
    """Each destination group's shared budget and back-off (dbmail.send.buckets): read-only but for lifting a slowdown."""

    list_display = ["name", "configured_per_minute", "rate_now", "slowed_since", "pushbacks", "pushback_text"]
    readonly_fields = [f.name for f in PacingBucket._meta.fields] + ["rate_now"]
    actions = ["lift_slowdown"]

    @admin.display(description="Rate now (a minute; 0: no limit)")
    def rate_now(self, obj):
        return round(backoff.effective_rate(obj, timezone.now()), 1)

    @admin.action(description="Lift the slowdown (back to the configured rate at once)", permissions=["change"])
    def lift_slowdown(self, request, queryset):
        n = queryset.update(
            slowed_per_minute=None,
            slowed_since=None,
            last_halved_at=None,
            pushbacks=0,
            tokens=Greatest(F("tokens"), Value(0.0)),  # no pause left either
        )
        self.message_user(request, f"{n} group(s) back at their configured rate.", messages.SUCCESS)

    def has_add_permission(self, request):
        return False
