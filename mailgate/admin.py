from django.contrib import admin, messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from . import gate, moderation, routing
from .models import Bounce, EmailList, HeldMessage, InboundMessage, SenderNotice


@admin.register(EmailList)
class EmailListAdmin(admin.ModelAdmin):
    list_display = ["name", "seq", "regex", "posting_policy", "resolver", "active"]
    list_editable = ["seq"]
    list_filter = ["active", "posting_policy"]
    search_fields = ["name", "regex", "description"]
    filter_horizontal = ["users", "groups"]
    change_list_template = "admin/mailgate/emaillist/change_list.html"

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
        context = {**self.admin_site.each_context(request), "title": "Test an address", "address": address,
                   "opts": self.model._meta}
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


class _InboundBase(admin.ModelAdmin):
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

    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        return [
            path("<int:pk>/raw/", self.admin_site.admin_view(self.raw_view), name="%s_%s_raw" % info),
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
        url = reverse("admin:%s_%s_raw" % info, args=[obj.pk])
        return format_html('<a href="{}">download ({} bytes received)</a>', url, obj.size)


@admin.register(InboundMessage)
class InboundMessageAdmin(_InboundBase):
    inlines = [BounceInline]
    actions = ["process_again"]

    @admin.action(description="Process again (raw and failed messages)")
    def process_again(self, request, queryset):
        done = 0
        for inbound in queryset.filter(status__in=[InboundMessage.Status.RAW, InboundMessage.Status.FAILED]):
            result = gate.reprocess(inbound)
            self.message_user(request, f"#{inbound.pk}: {result.message}", messages.INFO)
            done += 1
        if not done:
            self.message_user(request, "Only raw or failed messages can be processed again.", messages.WARNING)


@admin.register(HeldMessage)
class HeldMessageAdmin(_InboundBase):
    list_display = ["id", "received_at", "envelope_sender", "envelope_recipient", "subject", "email_list"]
    list_filter = ["email_list"]
    actions = ["approve", "reject"]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=InboundMessage.Status.HELD)

    def _decide(self, request, queryset, decide, verb):
        done = 0
        for inbound in queryset:
            try:
                decide(inbound, request.user)
                done += 1
            except moderation.NotHeld as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"{verb} {done} message(s).", messages.SUCCESS)

    @admin.action(description="Approve (forward to the list)")
    def approve(self, request, queryset):
        self._decide(request, queryset, moderation.approve, "Approved")

    @admin.action(description="Reject (notify the sender)")
    def reject(self, request, queryset):
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
class BounceAdmin(admin.ModelAdmin):
    list_display = ["created_at", "recipient", "bounce_type", "status_code", "email", "applied", "inbound"]
    list_filter = [MatchedFilter, "bounce_type", "applied"]
    search_fields = ["recipient", "diagnostic", "email__message_id"]
    raw_id_fields = ["email", "inbound"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SenderNotice)
class SenderNoticeAdmin(admin.ModelAdmin):
    list_display = ["address", "last_sent_at", "sent_count", "suppressed_count"]
    search_fields = ["address"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
