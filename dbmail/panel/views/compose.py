"""Compose and edit drafts, and the live recipient count behind the compose form."""

from django import forms
from django.contrib import messages
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dbmail import audit, states
from dbmail.content import audience, rendering
from dbmail.models import EmailTemplate, MessageRequest
from dbmail.panel.forms import ComposeForm
from dbmail.panel.views.access import panel_view

Status = states.RequestStatus


def _variables(form):
    """Template variables to offer for insertion: the recipient's, the site's, and any CSV columns."""
    names = list(rendering.RECIPIENT_VARIABLES) + list(rendering.SITE_VARIABLES)
    csv = form.kept_csv or {}
    names += [c for c in csv.get("columns", []) if c not in names]
    return names


@panel_view
def compose(request, pk=None):
    draft = None
    if pk is not None:
        draft = get_object_or_404(MessageRequest, pk=pk)
        if draft.status != Status.DRAFT:
            messages.error(request, "Only drafts can be edited; reuse it as a new request instead.")
            return redirect("commpanel:request", pk=pk)
    instance = draft or MessageRequest(creator=request.user, status=states.REQUEST_CREATE_DRAFT.target)
    if request.method == "POST":
        form = ComposeForm(request.POST, request.FILES, instance=instance)
        if form.is_valid():
            with transaction.atomic():
                mail = form.save()
                audit.record(request.user, "edit draft" if draft else "create draft", mail)
            for line in form.csv_report:
                messages.warning(request, f"Left out: {line}")
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
        instance = get_object_or_404(MessageRequest, pk=pk, status=Status.DRAFT)
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
    return JsonResponse(
        {"ok": True, "columns": params.get("columns", []) if name == "addresses" else [], **result.as_dict()}
    )
