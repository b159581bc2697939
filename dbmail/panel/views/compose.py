"""Compose and edit drafts, and the live recipient count behind the compose form."""

from django import forms
from django.contrib import messages
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dbmail import audit, states
from dbmail.content import audience, rendering
from dbmail.exceptions import TooLate
from dbmail.models import EmailTemplate, MessageRequest
from dbmail.panel.forms import ComposeForm
from dbmail.panel.views import requests
from dbmail.panel.views.access import panel_view

Status = states.RequestStatus


def _variables(form):
    """Template variables to offer for insertion: the recipient's, the site's, and any CSV columns."""
    names = list(rendering.RECIPIENT_VARIABLES) + list(rendering.SITE_VARIABLES)
    csv = form.kept_csv or {}
    names += [c for c in csv.get("columns", []) if c not in names]
    return names


# A request can change until its expansion starts: as a draft, or queued (scheduled, or due but not yet taken).
EDITABLE = (Status.DRAFT, Status.QUEUED)


@panel_view
def compose(request, pk=None):
    draft = None
    if pk is not None:
        draft = get_object_or_404(MessageRequest, pk=pk)
        if draft.status not in EDITABLE:
            messages.error(request, "Sending has started, so it can no longer be edited; reuse it as a new request.")
            return redirect("commpanel:request", pk=pk)
    instance = draft or MessageRequest(creator=request.user, status=states.REQUEST_CREATE_DRAFT.target)
    if request.method == "POST":
        form = ComposeForm(request.POST, request.FILES, instance=instance)
        if form.is_valid():
            try:
                mail = _save(form, draft)
            except TooLate:
                messages.error(
                    request, "Not saved: sending started meanwhile. Reuse it as a new request to send a changed copy."
                )
                return redirect("commpanel:request", pk=pk)
            action = "create draft" if draft is None else ("edit" if mail.status == Status.QUEUED else "edit draft")
            audit.record(request.user, action, mail)
            for line in form.csv_report:
                messages.warning(request, f"Left out: {line}")
            if mail.status == Status.QUEUED:
                messages.success(request, f"Changes saved. {requests.plan(mail, audience.summarise(mail).count)}")
            else:
                messages.success(request, "Draft saved. Check the preview, send yourself a test, then send it.")
            return redirect("commpanel:request", pk=mail.pk)
    else:
        form = ComposeForm(instance=instance, initial=_starting_point(request) if draft is None else None)
    return render(
        request,
        "commpanel/compose.html",
        {
            "form": form,
            "draft": draft,
            "variables": _variables(form),
            "templates": EmailTemplate.objects.all(),
            "attachments": draft.attachments.all() if draft else [],
        },
    )


def _save(form, draft):
    """Save the form; a queued request only while it is still queued.

    The row lock makes expansion's claim (SELECT ... FOR UPDATE SKIP LOCKED) pass it by until
    this commits, and the status read under the lock says whether expansion got there first.
    """
    with transaction.atomic():
        if draft is not None:
            current = MessageRequest.objects.select_for_update().filter(pk=draft.pk).values("status", "send_at").first()
            if current is None or current["status"] not in EDITABLE:
                raise TooLate
            # A reschedule since the form was shown stands; the form changes only the content.
            form.instance.status, form.instance.send_at = current["status"], current["send_at"]
        return form.save()


def _starting_point(request):
    """Initial values from ?template=<id>."""
    template_id = request.GET.get("template")
    if template_id and template_id.isdigit():
        template = EmailTemplate.objects.filter(pk=template_id).first()
        if template:
            return {"subject": template.subject, "text_body": template.text_body, "html_body": template.html_body}
    return {}


@require_POST
@panel_view
def count(request, pk=None):
    """The exact number of addresses the compose form's current choice reaches, with warnings (JSON)."""
    instance = MessageRequest(status=states.REQUEST_CREATE_DRAFT.target)
    if pk is not None:
        instance = get_object_or_404(MessageRequest, pk=pk, status__in=EDITABLE)
    form = ComposeForm(request.POST, request.FILES, instance=instance)
    form.is_valid()  # fills cleaned_data; only the recipient part matters here
    try:
        name, params = form.recipients_choice()
    except forms.ValidationError as exc:
        return JsonResponse({"ok": False, "error": " ".join(exc.messages)})
    probe = MessageRequest(
        recipient_set=name,
        recipient_params=params,
        subject=form.data.get("subject", ""),
        text_body=form.data.get("text_body", ""),
        html_body=form.data.get("html_body", ""),
    )
    result = audience.summarise(probe)
    if result.error:
        return JsonResponse({"ok": False, "error": result.error})
    return JsonResponse(
        {"ok": True, "columns": params.get("columns", []) if name == "addresses" else [], **result.as_dict()}
    )
