"""The requests: list, one request's page (preview, test, send, follow), its live status and actions."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.db.models.functions import Lower
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from dbmail import audit, rollup, states
from dbmail.conf import settings as conf
from dbmail.content import attachments, audience, recipients, rendering, validation, variables
from dbmail.intake import expand
from dbmail.models import AuditEvent, MessageRequest, TextOfEmail
from dbmail.panel import preview
from dbmail.panel.forms import ScheduleForm
from dbmail.panel.progress import LOST, progress, when
from dbmail.panel.views.access import panel_view
from dbmail.send import caps
from dbmail.track import guard

Status = states.RequestStatus
# What a refused send or reschedule carries back to the form, as typed.
SCHEDULE_FIELDS = ("when", "send_at")
EmailStatus = states.EmailStatus


def recipients_label(mail):
    """Who the request is for, in words."""
    params = mail.recipient_params or {}
    if mail.recipient_set == "addresses" and isinstance(params, dict) and isinstance(params.get("rows") or [], list):
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
    groups = params.get("groups") if isinstance(params, dict) else None
    if mail.recipient_set == "groups" and isinstance(groups, list) and all(isinstance(g, str) for g in groups):
        return f"{label}: {', '.join(groups)}"
    return f"{label} {params}" if params else label


@panel_view
def request_list(request):
    mails = MessageRequest.objects.select_related("sender", "creator").order_by("-created_at", "-pk")
    query = request.GET.get("q", "").strip()
    if query:
        number = query.removeprefix("#").strip()  # "#4", as the placeholder says, or "4"
        mails = mails.filter(
            Q(subject__icontains=query)
            | Q(sender__address__icontains=query)
            | Q(creator__username__icontains=query)
            | (Q(pk=int(number)) if number.isdigit() else Q(pk__in=[]))
        )
    page = Paginator(mails, conf.DBMAIL_PANEL_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    # One grouped query for the whole page's counts.
    per_request = {}
    for row in (
        TextOfEmail.objects.filter(request__in=rows).values("request_id", "status").annotate(n=Count("id")).order_by()
    ):
        per_request.setdefault(row["request_id"], {})[row["status"]] = row["n"]
    delivery = rollup.per_request(mail.pk for mail in rows)
    now = timezone.now()
    for mail in rows:
        counts = dict(mail.purged_counts or {})
        for status, n in per_request.get(mail.pk, {}).items():
            # A request's emails are its sender's: while that account is inactive, its waiting mail is held.
            shown = states.HELD if status in states.WAITING and not mail.sender.active else status
            counts[shown] = counts.get(shown, 0) + n
        mail.progress = progress(mail, counts, now)
        mail.delivery = _delivery(delivery.get(mail.pk))
    context = {"page": page, "rows": rows, "query": query, "now": now}
    return render(request, "commpanel/request_list.html", context)


def _delivery(counts):
    """A request's delivery figures from the roll-up, and their rates."""
    counts = counts or {name: 0 for name in rollup.COUNTS}
    return {"counts": counts, "rates": rollup.rates(counts)}


def history_of(mail):
    """The request's history, oldest first: its AuditEvents, people's actions and the machinery's steps.

    Each is one row, written once by whatever did it: a person (by name), dbmail_cron (a failed
    expansion) or the reputation guard in dbmail_track (a pause).
    """
    return [
        {"at": e.at, "who": e.actor_name, "what": e.action, "detail": e.detail, "kind": e.kind}
        for e in mail.audit_events.order_by("at", "id")
    ]


@panel_view
def request_detail(request, pk):
    mail = get_object_or_404(MessageRequest.objects.select_related("sender", "creator"), pk=pk)
    now = timezone.now()
    shown = progress(mail, mail.status_counts(), now, waiting=_waiting(mail, now))
    context = {
        "mail": mail,
        "progress": shown,
        "delivery": _delivery(rollup.per_request([mail.pk]).get(mail.pk)),
        "attachments": mail.attachments.all(),
        "poll_seconds": conf.DBMAIL_PANEL_POLL_SECONDS,
        "errors": rendering.template_errors(mail),
        "variable_warnings": variables.warnings_for(mail),
        "recipients_label": recipients_label(mail),
        "now": now,
        "large_threshold": conf.DBMAIL_LARGE_SEND_WARNING,
        "history": history_of(mail),
    }
    if mail.public and mail.status != Status.DRAFT:
        context["web_version_url"] = request.build_absolute_uri(reverse("dbmail:web_version", args=[mail.public_id]))
    typed = _typed_schedule(request)
    if mail.status == Status.DRAFT:
        context["schedule_form"] = ScheduleForm(initial=typed)
        context["summary"] = audience.summarise(mail)
    elif shown["editable"]:  # scheduled, or queued and not yet taken: it may still change
        current = {"when": "later", "send_at": timezone.localtime(mail.send_at)}
        context["schedule_form"] = ScheduleForm(initial=typed or current)
        context["summary"] = audience.summarise(mail)
        context["plan"] = plan(mail, context["summary"].count)
    if mail.status != Status.DRAFT:
        context.update(_email_table(request, mail))
        context["possibly_delivered"] = mail.possibly_delivered_count()
    context.update(_preview(request, mail))
    return render(request, "commpanel/request_detail.html", context)


def _waiting(mail, now=None):
    """Why the request's waiting mail waits beyond its own state: its sender account's daily cap (or "")."""
    if mail.sender.daily_cap is None or mail.status in (Status.DRAFT, Status.CANCELLED):
        return ""
    return caps.waiting_words(mail.sender, now or timezone.now())


def _preview(request, mail):
    index = request.GET.get("i", "0")
    index = int(index) if index.isdigit() else 0
    search = request.GET.get("rcpt", "").strip()
    try:
        shown = preview.for_page(mail, index, search)  # once sent: the stored emails
    except (rendering.RenderError, recipients.UnknownRecipientSet, recipients.RecipientSetError) as exc:
        return {"preview_error": str(exc)}
    return {"preview": shown, "preview_search": search}


def plan(mail, count, now=None):
    """What will happen and when, in one sentence."""
    now = now or timezone.now()
    whom = f"{count:,} address{'es' if count != 1 else ''}"
    if mail.send_at > now:
        return f"This will be sent to {whom} on {when(mail.send_at)}."
    return f"This goes out to {whom} on the next sending run."


def _email_table(request, mail):
    # Lower(address) walks the (request, lower(address)) index: a page of a big request is quick.
    emails = mail.emails.order_by(Lower("to_address"), "pk")
    status = request.GET.get("status", "")
    if status in EmailStatus.values:
        emails = emails.filter(status=status)
    elif status == states.HELD:
        emails = emails.filter(status__in=states.WAITING, account__active=False)
    address = request.GET.get("address", "").strip()
    if address:
        emails = emails.filter(preview.address_contains(address))
    page = Paginator(
        # request_id too: the related manager sets each row's request, which would load it row by row.
        emails.only(
            "id",
            "request_id",
            "to_address",
            "to_name",
            "status",
            "attempts",
            "sent_at",
            "last_error",
            "status_changed_at",
        ),
        conf.DBMAIL_PANEL_PAGE_SIZE,
    ).get_page(request.GET.get("page"))
    return {"emails": page, "status_filter": status, "address_filter": address, "statuses": EmailStatus.values}


@panel_view
def email_detail(request, pk, email_pk):
    """One recipient's email and its history: each attempt, tracking event and admin action."""
    mail = get_object_or_404(MessageRequest, pk=pk)
    email = get_object_or_404(mail.emails.select_related("request"), pk=email_pk)
    events = list(email.events.order_by("at", "id"))
    # "Tries" counts what the history shows: every SMTP attempt. The email's own counter restarts
    # at a retry (it is the budget toward DBMAIL_MAX_ATTEMPTS), so it is shown only when it differs.
    tries = sum(1 for e in events if e.kind == e.Kind.ATTEMPT)
    in_flight = email.status == EmailStatus.SENDING  # claimed: this try has no history row yet
    return render(
        request,
        "commpanel/email_detail.html",
        {
            "mail": mail,
            "email": email,
            "events": events,
            "tries": tries + in_flight,
            "budget_used": email.attempts if email.attempts != tries + in_flight else None,
            "max_attempts": conf.DBMAIL_MAX_ATTEMPTS,
            "raw": _raw_source(email),
            "attachments": mail.attachments.all() if email.raw_message is None else [],
        },
    )


RAW_SHOWN = 200_000  # characters of a stored whole message shown on the email page


def _raw_source(email):
    """A message stored whole (attachments, forwards) as text to read, cut to RAW_SHOWN characters."""
    if email.raw_message is None:
        return ""
    text = bytes(email.raw_message).decode("utf-8", "replace")
    return text if len(text) <= RAW_SHOWN else text[:RAW_SHOWN] + f"\n[... {len(text) - RAW_SHOWN:,} more characters]"


@panel_view
def request_status(request, pk):
    """The request page's live state (polled while anything can change): numbers and words,
    the delivery figures, and the parts of the page redrawn from the same templates."""
    mail = get_object_or_404(MessageRequest.objects.select_related("sender"), pk=pk)
    shown = progress(mail, mail.status_counts(), waiting=_waiting(mail))
    delivery = _delivery(rollup.per_request([mail.pk]).get(mail.pk))
    context = {"mail": mail, "progress": shown, "delivery": delivery, **_email_table(request, mail)}
    return JsonResponse(
        {
            **shown,
            "delivery": delivery,
            "html": {
                part: render_to_string(f"commpanel/_request_{part}.html", context, request=request)
                for part in ("actions", "emails", "delivery")
            },
        }
    )


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
            return _refused_schedule(request, form, pk)
        try:
            validation.full_clean(mail)
        except ValidationError as exc:  # the draft became invalid since (e.g. its sender was deactivated)
            for error in exc.messages:
                messages.error(request, error)
            return redirect("commpanel:request", pk=pk)
        mail.send_at = form.send_time()
        mail.status = states.SCHEDULE.target
        mail.save(update_fields=["send_at", "status"])
        later = form.cleaned_data["when"] == "later"
        audit.record(
            request.user, "schedule" if later else "send", mail, detail=f"to go out at {mail.send_at:%Y-%m-%d %H:%M %Z}"
        )
    count = audience.summarise(mail).count
    if form.cleaned_data["when"] == "later":
        messages.success(request, f"Scheduled. {plan(mail, count)} You can change or cancel it until then.")
    else:
        messages.success(request, f"Queued. {plan(mail, count)}")
    return redirect("commpanel:request", pk=pk)


@require_POST
@panel_view
def reschedule(request, pk):
    """Move a request that has not started yet to another time (or to now)."""
    mail = get_object_or_404(MessageRequest, pk=pk)
    form = ScheduleForm(request.POST)
    if not form.is_valid():
        return _refused_schedule(request, form, pk)
    send_at = form.send_time()
    # Conditional on the status: once expansion has taken the request (queued -> expanding),
    # nothing changes. Expansion's claim skips a row this UPDATE holds, so the two never interleave.
    moved = MessageRequest.objects.filter(pk=pk, status=Status.QUEUED).update(send_at=send_at)
    if not moved:
        messages.error(request, _too_late(mail))
        return redirect("commpanel:request", pk=pk)
    mail.send_at = send_at
    audit.record(request.user, "reschedule", mail, detail=f"to go out at {send_at:%Y-%m-%d %H:%M %Z}")
    messages.success(request, f"Rescheduled. {plan(mail, audience.summarise(mail).count)}")
    return redirect("commpanel:request", pk=pk)


def _refused_schedule(request, form, pk):
    """Back to the request page with the errors, and the choice as typed in the form again to correct."""
    for errors in form.errors.values():
        for error in errors:
            messages.error(request, error)
    typed = {name: request.POST.get(name, "") for name in SCHEDULE_FIELDS}
    return redirect(f"{reverse('commpanel:request', args=[pk])}?{urlencode(typed)}")


def _typed_schedule(request):
    """The schedule choice a refused send or reschedule brought back (?when=...&send_at=...), else None."""
    if request.GET.get("when") not in ("now", "later"):
        return None
    return {name: request.GET.get(name, "") for name in SCHEDULE_FIELDS}


def _too_late(mail):
    mail.refresh_from_db(fields=["status"])
    if mail.status == Status.CANCELLED:
        return "Not changed: this request was cancelled."
    return "Too late to change it: sending has started. Cancel the rest if it must not go out."


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
        audit.record(
            request.user, "send test", mail, detail=f"as {shown.recipient.email} would get it, to {email.to_address}"
        )
    except (rendering.RenderError, recipients.UnknownRecipientSet, recipients.RecipientSetError) as exc:
        messages.error(request, f"Not sent: {exc}")
        return redirect("commpanel:request", pk=pk)
    # Outside a transaction the ad-hoc send has run by now; its outcome is on the row.
    email.refresh_from_db(fields=["status", "last_error"])
    if email.status == EmailStatus.SENT:
        messages.success(request, f"Test sent to {email.to_address} as {shown.recipient.email} would get it.")
    elif email.status in states.WAITING:
        messages.warning(
            request,
            f"The mail server did not take the test yet; the next sending run sends it to {email.to_address}.",
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
    elif mail.status == Status.DRAFT:
        mail.cancel(actor=request.user)  # its history records the step
        messages.success(request, "Draft discarded: nothing was sent.")
    else:
        before = mail.status_counts()
        mail.cancel(actor=request.user)
        after = mail.status_counts()
        stopped = after.get(EmailStatus.CANCELLED, 0) - before.get(EmailStatus.CANCELLED, 0)
        messages.success(request, _cancelled(stopped, progress(mail, after)))
    return redirect("commpanel:request", pk=pk)


def _cancelled(stopped, shown):
    """'Cancelled: 100 emails will not go out; 4,900 sent.' or 'Cancelled: nothing was sent.'"""
    went = {s["key"]: s["n"] for s in shown["segments"]}
    if not went[EmailStatus.SENT] and not went[LOST]:
        return "Cancelled: nothing was sent."
    stopped_text = (
        f"{stopped:,} email{'s' if stopped != 1 else ''} will not go out" if stopped else "nothing was left to stop"
    )
    return f"Cancelled: {stopped_text}. So far: {shown['summary']}."


@require_POST
@panel_view
def retry(request, pk):
    mail = get_object_or_404(MessageRequest, pk=pk)
    n = TextOfEmail.retry_now(mail.emails.all(), actor=request.user)
    audit.record(request.user, "retry", mail, detail=f"{n} email(s) queued again")
    messages.success(request, f"{n:,} email{'s' if n != 1 else ''} will be tried again on the next sending run.")
    return redirect("commpanel:request", pk=pk)


@require_POST
@panel_view
def resume(request, pk):
    """A failed request, its cause fixed, goes back to the queue and resumes from its checkpoint;
    a request the reputation guard paused goes on where it was."""
    mail = get_object_or_404(MessageRequest, pk=pk)
    if mail.status == Status.PAUSED:
        words = guard.resume(mail, user=request.user)
        if words:
            messages.success(request, f"Resumed: the rest goes out with the next sending runs ({words}).")
        return redirect("commpanel:request", pk=pk)
    if mail.status not in states.RETRY_REQUEST.sources:
        messages.info(request, "Only a failed or paused request can be resumed this way.")
        return redirect("commpanel:request", pk=pk)
    problem = expand.obvious_problem(mail)
    if problem:
        messages.error(request, f"Not retried: it would fail again: {problem}")
        return redirect("commpanel:request", pk=pk)
    text = mail.retry(user=request.user)
    if text:
        audit.record(request.user, AuditEvent.Kind.RETRY.label, mail, detail=text, kind=AuditEvent.Kind.RETRY)
        messages.success(request, "Queued again: the next sending run continues where it stopped.")
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
            body_format=source.body_format,
            recipient_set=source.recipient_set,
            recipient_params=source.recipient_params,
            context=source.context,
            public=source.public,
            creator=request.user,
            status=states.REQUEST_CREATE_DRAFT.target,
        )
        attachments.copy(source, copy)
        audit.record(request.user, "create draft", copy, detail=f"reused from request #{source.pk}")
    messages.success(request, f"New draft made from request #{source.pk}. Change what you need.")
    return redirect("commpanel:edit", pk=copy.pk)
