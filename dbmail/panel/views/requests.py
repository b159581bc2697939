"""The requests: list, one request's page (preview, test, send, follow), its live status and actions."""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from dbmail import states
from dbmail.content import attachments, audience, recipients, rendering, validation
from dbmail.models import MessageRequest, TextOfEmail
from dbmail.panel import preview
from dbmail.panel.forms import ScheduleForm
from dbmail.panel.views.access import panel_view

Status = states.RequestStatus
EmailStatus = states.EmailStatus
# The order statuses are shown in, bars and tables alike.
SHOWN = [
    EmailStatus.QUEUED,
    EmailStatus.SENDING,
    EmailStatus.SENT,
    EmailStatus.DELIVERED,
    EmailStatus.DEFERRED,
    EmailStatus.DROPPED,
    EmailStatus.BOUNCED,
    EmailStatus.COMPLAINED,
    EmailStatus.CANCELLED,
]


def progress(mail, counts):
    """Numbers for the progress bar and chart of one request."""
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if s in states.FINAL)
    waiting = mail.status in states.REQUEST_TO_EXPAND or any(counts.get(s) for s in states.UNFINISHED)
    return {
        "status": mail.status,
        "total": total,
        "done": done,
        "percent": round(100 * done / total) if total else (100 if mail.status == Status.EXPANDED else 0),
        "counts": {s: counts.get(s, 0) for s in SHOWN if counts.get(s)},
        "active": waiting and mail.status not in states.REQUEST_DORMANT,
        "cancellable": mail.status in states.REQUEST_TO_EXPAND
        or (mail.status == Status.EXPANDED and any(counts.get(s) for s in states.CANCEL.sources)),
        "retryable": any(counts.get(s) for s in states.RETRY.sources),
    }


def recipients_label(mail):
    """Who the request is for, in words."""
    params = mail.recipient_params or {}
    if mail.recipient_set == "addresses":
        rows = len(params.get("rows") or [])
        columns = ", ".join(params.get("columns", []))
        if params.get("source") == "csv":
            return f"CSV {params.get('filename', '')} ({rows} rows; columns {columns})"
        if params.get("source") == "api":
            return f"{rows} rows from the API (columns {columns})"
        return f"{rows} pasted address{'es' if rows != 1 else ''}"
    try:
        label = recipients.get_set(mail.recipient_set).label
    except recipients.UnknownRecipientSet:
        label = f"{mail.recipient_set} (no longer registered)"
    if mail.recipient_set == "groups":
        return f"{label}: {', '.join(params.get('groups', []))}"
    return f"{label} {params}" if params else label


@panel_view
def request_list(request):
    mails = MessageRequest.objects.select_related("sender", "creator").order_by("-created_at", "-pk")
    query = request.GET.get("q", "").strip()
    if query:
        mails = mails.filter(
            Q(subject__icontains=query)
            | Q(sender__address__icontains=query)
            | Q(creator__username__icontains=query)
            | (Q(pk=int(query)) if query.isdigit() else Q(pk__in=[]))
        )
    page = Paginator(mails, settings.DBMAIL_PANEL_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    # One grouped query for the whole page's counts.
    per_request = {}
    for row in (
        TextOfEmail.objects.filter(request__in=rows).values("request_id", "status").annotate(n=Count("id")).order_by()
    ):
        per_request.setdefault(row["request_id"], {})[row["status"]] = row["n"]
    for mail in rows:
        counts = dict(mail.purged_counts or {})
        for status, n in per_request.get(mail.pk, {}).items():
            counts[status] = counts.get(status, 0) + n
        mail.progress = progress(mail, counts)
    context = {"page": page, "rows": rows, "query": query, "now": timezone.now()}
    return render(request, "commpanel/request_list.html", context)


@panel_view
def request_detail(request, pk):
    mail = get_object_or_404(MessageRequest.objects.select_related("sender", "creator"), pk=pk)
    context = {
        "mail": mail,
        "progress": progress(mail, mail.status_counts()),
        "attachments": mail.attachments.all(),
        "poll_seconds": settings.DBMAIL_PANEL_POLL_SECONDS,
        "errors": rendering.template_errors(mail),
        "recipients_label": recipients_label(mail),
        "now": timezone.now(),
        "large_threshold": settings.DBMAIL_LARGE_SEND_WARNING,
    }
    if mail.public and mail.status != Status.DRAFT:
        context["web_version_url"] = request.build_absolute_uri(reverse("dbmail:web_version", args=[mail.public_id]))
    if mail.status == Status.DRAFT:
        context["schedule_form"] = ScheduleForm()
        context["summary"] = audience.summarise(mail)
    else:
        context.update(_email_table(request, mail))
    context.update(_preview(request, mail))
    return render(request, "commpanel/request_detail.html", context)


def _preview(request, mail):
    index = request.GET.get("i", "0")
    index = int(index) if index.isdigit() else 0
    search = request.GET.get("rcpt", "").strip()
    try:
        shown = preview.build(mail, index, search)
    except rendering.RenderError as exc:
        return {"preview_error": str(exc)}
    return {"preview": shown, "preview_search": search}


def _email_table(request, mail):
    emails = mail.emails.order_by("to_address")
    status = request.GET.get("status", "")
    if status in EmailStatus.values:
        emails = emails.filter(status=status)
    address = request.GET.get("address", "").strip()
    if address:
        emails = emails.filter(to_address__icontains=address)
    page = Paginator(
        emails.only("id", "to_address", "to_name", "status", "attempts", "sent_at", "last_error", "status_changed_at"),
        settings.DBMAIL_PANEL_PAGE_SIZE,
    ).get_page(request.GET.get("page"))
    return {"emails": page, "status_filter": status, "address_filter": address, "statuses": SHOWN}


@panel_view
def email_detail(request, pk, email_pk):
    """One recipient's email and its history: each attempt, tracking event and admin action."""
    mail = get_object_or_404(MessageRequest, pk=pk)
    email = get_object_or_404(mail.emails.select_related("request"), pk=email_pk)
    return render(
        request,
        "commpanel/email_detail.html",
        {"mail": mail, "email": email, "events": email.events.order_by("at", "id")},
    )


@panel_view
def request_status(request, pk):
    """Live progress for the request page (polled while sending)."""
    mail = get_object_or_404(MessageRequest, pk=pk)
    return JsonResponse(progress(mail, mail.status_counts()))


@require_POST
@panel_view
def send(request, pk):
    """Queue a draft: now or at the chosen time. Checks everything once more first."""
    with transaction.atomic():
        mail = get_object_or_404(MessageRequest.objects.select_for_update(), pk=pk)
        if mail.status not in states.SCHEDULE.sources:
            messages.error(request, "This request has already been queued.")
            return redirect("commpanel:request", pk=pk)
        form = ScheduleForm(request.POST)
        if not form.is_valid():
            for errors in form.errors.values():
                for error in errors:
                    messages.error(request, error)
            return redirect("commpanel:request", pk=pk)
        try:
            validation.full_clean(mail)
        except ValidationError as exc:  # the draft became invalid since (e.g. its sender was deactivated)
            for error in exc.messages:
                messages.error(request, error)
            return redirect("commpanel:request", pk=pk)
        mail.send_at = form.send_time()
        mail.status = states.SCHEDULE.target
        mail.save(update_fields=["send_at", "status"])
    if form.cleaned_data["when"] == "later":
        messages.success(request, f"Scheduled for {mail.send_at:%Y-%m-%d %H:%M %Z}. You can cancel it until then.")
    else:
        messages.success(request, "Queued: it goes out on the next dbmail_cron run.")
    return redirect("commpanel:request", pk=pk)


@require_POST
@panel_view
def send_test(request, pk):
    mail = get_object_or_404(MessageRequest.objects.select_related("sender"), pk=pk)
    if not request.user.email:
        messages.error(request, "Your account has no email address to send the test to.")
        return redirect("commpanel:request", pk=pk)
    index = request.POST.get("i", "0")
    try:
        shown = preview.build(mail, int(index) if index.isdigit() else 0)
        if shown is None:
            messages.error(request, "There is no recipient to render the test for.")
            return redirect("commpanel:request", pk=pk)
        email = preview.send_test(mail, shown.recipient, request.user)
    except rendering.RenderError as exc:
        messages.error(request, f"Not sent: {exc}")
        return redirect("commpanel:request", pk=pk)
    # Outside a transaction the ad-hoc send has run by now; its outcome is on the row.
    email.refresh_from_db(fields=["status", "last_error"])
    if email.status == EmailStatus.SENT:
        messages.success(request, f"Test sent to {email.to_address} as {shown.recipient.email} would get it.")
    elif email.status in states.WAITING:
        messages.warning(
            request,
            f"The mail server did not take the test yet; the next dbmail_cron run sends it to {email.to_address}.",
        )
    else:
        messages.error(request, f"Test not sent: {email.last_error}")
    return redirect(reverse("commpanel:request", args=[pk]) + f"?i={shown.index}")


@require_POST
@panel_view
def cancel(request, pk):
    mail = get_object_or_404(MessageRequest, pk=pk)
    if mail.status == Status.CANCELLED:
        messages.info(request, "This request was already cancelled.")
    else:
        before = mail.status_counts()
        mail.cancel()
        stopped = mail.status_counts().get(EmailStatus.CANCELLED, 0) - before.get(EmailStatus.CANCELLED, 0)
        messages.success(request, f"Cancelled. {stopped} unsent email(s) will not go out.")
    return redirect("commpanel:request", pk=pk)


@require_POST
@panel_view
def retry(request, pk):
    mail = get_object_or_404(MessageRequest, pk=pk)
    n = TextOfEmail.retry_now(mail.emails.all())
    messages.success(request, f"{n} email(s) will be retried on the next dbmail_cron run.")
    return redirect("commpanel:request", pk=pk)


@require_POST
@panel_view
def reuse(request, pk):
    """A new draft with this request's content, recipients and attachments."""
    source = get_object_or_404(MessageRequest, pk=pk)
    with transaction.atomic():
        copy = MessageRequest.objects.create(
            sender=source.sender,
            reply_to=source.reply_to,
            subject=source.subject,
            text_body=source.text_body,
            html_body=source.html_body,
            recipient_set=source.recipient_set,
            recipient_params=source.recipient_params,
            context=source.context,
            public=source.public,
            creator=request.user,
            status=states.REQUEST_CREATE_DRAFT.target,
        )
        attachments.copy(source, copy)
    messages.success(request, f"New draft made from request #{source.pk}. Change what you need.")
    return redirect("commpanel:edit", pk=copy.pk)
