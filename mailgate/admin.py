from django import forms
from django.contrib import admin, messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from dbmail import audit
from dbmail.admin import HistoryAdmin
from dbmail.audit import ActPermission, AuditedAdmin
from mailgate.exceptions import NotHeld
from mailgate.gate import routing
from mailgate.models import (
    Bounce,
    EmailList,
    FeedbackReport,
    GateHeartbeat,
    HeldMessage,
    InboundMessage,
    MailAccount,
    MailFolder,
    MailServerProfile,
    Message,
    MessagePart,
    SenderNotice,
)

# The gate's and the mailboxes' logic (forwarding, moderation, the IMAP client) is imported by the
# actions that use it, not here: every web worker and `manage.py check` imports the admin modules
# (mailsite/adminconfig.py), and only these actions need it.


@admin.register(EmailList)
class EmailListAdmin(AuditedAdmin):
    list_display = ["name", "seq", "regex", "posting_policy", "resolver", "active"]
    list_editable = ["seq"]
    list_filter = ["active", "posting_policy"]
    search_fields = ["name", "regex", "description"]
    filter_horizontal = ["users", "groups"]
    change_list_template = "admin/mailgate/emaillist/change_list.html"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        for warning in obj.breadth_warnings():
            self.message_user(request, warning, messages.WARNING)

    def get_urls(self):
        return [
            path("test-address/", self.admin_site.admin_view(self.test_address_view), name="mailgate_test_address"),
            *super().get_urls(),
        ]

    def test_address_view(self, request):
        """Which list an address reaches and who would receive mail sent to it (staff only, read only)."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        address = request.GET.get("address", "").strip()
        context = {
            **self.admin_site.each_context(request),
            "title": "Test an address",
            "address": address,
            "opts": self.model._meta,
        }
        if address:
            try:
                context["route"] = routing.route(address)
            except Exception as exc:  # a broken resolver is exactly what this tool should show
                context["error"] = f"{type(exc).__name__}: {exc}"
            context["tried"] = True
        return TemplateResponse(request, "admin/mailgate/test_address.html", context)


class BounceInline(admin.TabularInline):
    model = Bounce
    extra = 0
    can_delete = False
    fields = readonly_fields = ["recipient", "bounce_type", "status_code", "email", "applied", "diagnostic"]

    def has_add_permission(self, request, obj=None):
        return False


class FeedbackReportInline(admin.TabularInline):
    model = FeedbackReport
    extra = 0
    can_delete = False
    fields = readonly_fields = ["feedback_type", "user_agent", "email", "identified_by", "applied", "note"]
    verbose_name_plural = "complaint reports (ARF)"

    def has_add_permission(self, request, obj=None):
        return False


class _InboundBase(ActPermission, admin.ModelAdmin):
    list_display = ["id", "received_at", "envelope_sender", "envelope_recipient", "subject", "status", "email_list"]
    list_filter = ["status", "email_list"]
    search_fields = ["envelope_sender", "envelope_recipient", "subject", "message_id", "from_header"]
    date_hierarchy = "received_at"
    exclude = ["raw"]
    readonly_fields = [
        "received_at", "envelope_sender", "envelope_recipient", "size", "status", "message_id", "from_header",
        "subject", "email_list", "match_groups", "forwarded_count", "note", "decided_by", "decided_at", "raw_link",
    ]  # fmt: skip

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # what arrived is history; mailgate_purge removes it by the retention settings

    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        return [
            path("<int:pk>/raw/", self.admin_site.admin_view(self.raw_view), name="{}_{}_raw".format(*info)),
            *super().get_urls(),
        ]

    def raw_view(self, request, pk):
        """The stored bytes as a download (never rendered: it is untrusted mail)."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        inbound = get_object_or_404(InboundMessage, pk=pk)
        response = HttpResponse(bytes(inbound.raw), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="inbound-{pk}.eml"'
        return response

    @admin.display(description="Raw message")
    def raw_link(self, obj):
        info = self.model._meta.app_label, self.model._meta.model_name
        url = reverse("admin:{}_{}_raw".format(*info), args=[obj.pk])
        return format_html('<a href="{}">download ({} bytes received)</a>', url, obj.size)


@admin.register(InboundMessage)
class InboundMessageAdmin(_InboundBase):
    inlines = [BounceInline, FeedbackReportInline]
    actions = ["process_again"]

    @admin.action(description="Process again (raw and failed messages)", permissions=["act"])
    def process_again(self, request, queryset):
        done = 0
        for inbound in queryset.filter(status__in=[InboundMessage.Status.RAW, InboundMessage.Status.FAILED]):
            from mailgate.gate import receive as gate  # imported here: see the top of the module

            result = gate.reprocess(inbound)
            audit.record(request.user, "process again", inbound, detail=result.message)
            self.message_user(request, f"#{inbound.pk}: {result.message}", messages.INFO)
            done += 1
        if not done:
            self.message_user(request, "Only raw or failed messages can be processed again.", messages.WARNING)


@admin.register(HeldMessage)
class HeldMessageAdmin(_InboundBase):
    list_display = ["id", "received_at", "envelope_sender", "envelope_recipient", "subject", "email_list", "why_held"]
    list_filter = ["email_list"]
    actions = ["approve", "reject"]

    @admin.display(description="why held")
    def why_held(self, obj):
        # The policy's note: "the list is moderated", or why a member's address is not proven (mailgate.gate.proof).
        return obj.note[:300]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=InboundMessage.Status.HELD)

    def _decide(self, request, queryset, decide, verb):
        done = 0
        for inbound in queryset:
            try:
                decide(inbound, request.user)
                done += 1
            except NotHeld as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"{verb} {done} message(s).", messages.SUCCESS)

    @admin.action(description="Approve (forward to the list)", permissions=["act"])
    def approve(self, request, queryset):
        from mailgate.gate import moderation  # imported here: see the top of the module

        self._decide(request, queryset, moderation.approve, "Approved")

    @admin.action(description="Reject (notify the sender)", permissions=["act"])
    def reject(self, request, queryset):
        from mailgate.gate import moderation  # imported here: see the top of the module

        self._decide(request, queryset, moderation.reject, "Rejected")


class MatchedFilter(admin.SimpleListFilter):
    title = "matched"
    parameter_name = "matched"

    def lookups(self, request, model_admin):
        return [("yes", "Matched to an outbound email"), ("no", "Unmatched")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(email__isnull=False)
        if self.value() == "no":
            return queryset.filter(email__isnull=True)
        return queryset


@admin.register(Bounce)
class BounceAdmin(HistoryAdmin):  # a finding of a stored bounce: history, like the bounce
    list_display = ["created_at", "recipient", "bounce_type", "status_code", "email", "applied", "inbound"]
    list_filter = [MatchedFilter, "bounce_type", "applied"]
    search_fields = ["recipient", "diagnostic", "email__message_id"]
    raw_id_fields = ["email", "inbound"]


@admin.register(FeedbackReport)
class FeedbackReportAdmin(HistoryAdmin):  # history, like the report itself
    """Complaint reports (ARF): matched or not, applied or only recorded; never bounces."""

    list_display = ["created_at", "feedback_type", "user_agent", "email", "identified_by", "applied", "inbound"]
    list_filter = [MatchedFilter, "feedback_type", "applied", "identified_by"]
    search_fields = ["user_agent", "note", "email__message_id", "email__to_address"]
    raw_id_fields = ["email", "inbound"]


@admin.register(SenderNotice)
class SenderNoticeAdmin(admin.ModelAdmin):
    list_display = ["address", "last_sent_at", "sent_count", "suppressed_count"]
    search_fields = ["address"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(GateHeartbeat)
class GateHeartbeatAdmin(admin.ModelAdmin):
    """What the gate last answered the MTA, per host (dbmail_status reads it). Delete a host that is gone."""

    list_display = [
        "host",
        "last_run_at",
        "last_accepted_at",
        "last_tempfail_at",
        "tempfails_in_a_row",
        "last_tempfail",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- Mailboxes (IMAP accounts, folders, messages) ---


class MailAccountForm(forms.ModelForm):
    """The secret is write-only: the field starts empty, and left empty it keeps the stored one."""

    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False), required=False, help_text="Leave empty to keep the current one."
    )

    class Meta:
        model = MailAccount
        fields = ["owner", "profile", "address", "display_name", "login", "secret", "options", "enabled"]

    def clean_address(self):
        address = (self.cleaned_data.get("address") or "").strip().lower()
        from mailgate.mailboxes import identity  # imported here: see the top of the module

        refusal = identity.address_refusal(address, self.instance if self.instance.pk else None)
        if refusal:
            raise forms.ValidationError(refusal)
        return address

    def clean_secret(self):
        secret = self.cleaned_data.get("secret")
        if not secret and not self.instance.pk:
            raise forms.ValidationError("A new account needs its password.")
        return secret or self.instance.secret


class MailFolderInline(admin.TabularInline):
    model = MailFolder
    extra = 0
    fields = ["name", "enabled", "delete_on_server", "route_to_lists", "options", "last_uid", "last_polled_at",
              "exists_on_server", "last_error"]  # fmt: skip
    readonly_fields = ["last_uid", "last_polled_at", "exists_on_server", "last_error"]


@admin.register(MailServerProfile)
class MailServerProfileAdmin(AuditedAdmin):
    list_display = ["name", "imap_host", "imap_port", "smtp_host", "smtp_port"]
    search_fields = ["name", "imap_host", "smtp_host"]

    def save_model(self, request, obj, form, change):
        from mailgate.mailboxes import outgoing  # imported here: see the top of the module

        super().save_model(request, obj, form, change)
        outgoing.sync_profile(obj)


@admin.register(MailAccount)
class MailAccountAdmin(AuditedAdmin):
    form = MailAccountForm
    list_display = ["address", "owner", "profile", "enabled", "discovered_at", "last_error"]
    list_filter = ["enabled", "profile"]
    search_fields = ["address", "login", "display_name"]
    readonly_fields = ["discovered_at", "last_error", "sender"]
    inlines = [MailFolderInline]
    actions = ["discover_folders"]

    def save_model(self, request, obj, form, change):
        from mailgate.mailboxes import imap, outgoing  # imported here: see the top of the module

        super().save_model(request, obj, form, change)
        outgoing.sync_sender(obj)
        if not change:  # a new account: list its folders at once, as the API does
            added = imap.discover_quietly(obj)
            if obj.last_error:
                self.message_user(request, obj.last_error, messages.WARNING)
            else:
                self.message_user(request, f"{len(added)} folder(s) found; turn on the ones to poll.")

    @admin.action(description="Discover folders again", permissions=["change"])
    def discover_folders(self, request, queryset):
        from mailgate.mailboxes import imap  # imported here: see the top of the module

        for account in queryset.select_related("profile"):
            try:
                added = imap.discover(account)
                self.message_user(request, f"{account}: {len(added)} new folder(s) {', '.join(added)}".rstrip())
            except imap.MailboxError as exc:
                self.message_user(request, str(exc), messages.ERROR)


@admin.register(MailFolder)
class MailFolderAdmin(AuditedAdmin):
    list_display = ["__str__", "enabled", "delete_on_server", "route_to_lists", "last_uid", "last_polled_at",
                    "last_error"]  # fmt: skip
    list_filter = ["enabled", "delete_on_server", "route_to_lists", "account"]
    search_fields = ["name", "account__address"]
    readonly_fields = ["uidvalidity", "last_uid", "last_polled_at", "lease_until", "last_error", "exists_on_server"]
    actions = ["enable", "disable"]

    @admin.action(description="Poll the selected folders", permissions=["change"])
    def enable(self, request, queryset):
        self._switch(request, queryset, True)

    @admin.action(description="Stop polling the selected folders", permissions=["change"])
    def disable(self, request, queryset):
        self._switch(request, queryset, False)

    def _switch(self, request, queryset, enabled):
        for folder in queryset.select_related("account"):
            audit.record(request.user, "poll" if enabled else "stop polling", folder)
        queryset.update(enabled=enabled)


class MessagePartInline(admin.TabularInline):
    model = MessagePart
    extra = 0
    can_delete = False
    fields = readonly_fields = ["kind", "position", "filename", "content_type", "content_id", "size", "file"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "direction", "status", "account", "folder", "subject", "from_header"]
    list_filter = ["direction", "status", "account"]
    search_fields = ["subject", "from_header", "message_id"]
    date_hierarchy = "created_at"
    readonly_fields = ["inbound", "uidvalidity", "uid", "sha256", "deleted_on_server", "headers", "last_error",
                       "created_at", "updated_at"]  # fmt: skip
    exclude = ["outbox"]
    inlines = [MessagePartInline]
    raw_id_fields = ["folder"]
