"""Compose and edit drafts; behind the form, the live recipient count and the live template check and preview."""

from django.contrib import messages
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dbmail import audit, states
from dbmail.content import audience, authoring, rendering, starters, variables
from dbmail.exceptions import RenderError, TooLate
from dbmail.models import BodyFormat, EmailTemplate, MessageRequest
from dbmail.panel import preview
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
        form = ComposeForm(request.POST, request.FILES, instance=instance, user=request.user)
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
        form.keep_uploads()  # a failed save loses no file: they come back with the form
    else:
        initial = _starting_point(request) if draft is None else None
        form = ComposeForm(instance=instance, initial=initial, user=request.user)
    return render(
        request,
        "commpanel/compose.html",
        {
            "form": form,
            "draft": draft,
            "variables": _variables(form),
            "templates": EmailTemplate.objects.all(),
            "starters": starters.STARTERS,
            # What "Start from" shows: the template this form was started from, not the list's first.
            "chosen": request.GET.get("template", ""),
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
    """Initial values from ?template=<id> (a saved template) or ?template=starter:<key> (a built-in one)."""
    choice = request.GET.get("template", "")
    template = None
    if choice.startswith("starter:"):
        template = starters.get(choice.partition(":")[2])
    elif choice.isdigit():
        template = EmailTemplate.objects.filter(pk=choice).first()
    if template is None:
        return {}
    fields = ("subject", "text_body", "html_body", "body_format")
    return {name: getattr(template, name) for name in fields}


@require_POST
@panel_view
def count(request, pk=None):
    """Who the compose form's current choice reaches, exactly as saving would judge it (JSON).

    The verdict is the form's own (ComposeForm.recipients_verdict): `ok` says
    whether saving accepts the recipients; the good addresses are counted
    even when it does not, and the bad lines are listed.
    """
    instance = MessageRequest(status=states.REQUEST_CREATE_DRAFT.target)
    if pk is not None:
        instance = get_object_or_404(MessageRequest, pk=pk, status__in=EDITABLE)
    form = ComposeForm(request.POST, request.FILES, instance=instance, user=request.user)
    form.is_valid()  # fills cleaned_data and the verdict; only the recipient part matters here
    verdict = form.verdict
    answer = {"ok": verdict.ok, "errors": verdict.errors, "bad": verdict.bad, "left_out": verdict.left_out}
    if verdict.params is None:
        return JsonResponse({**answer, "count": None})
    probe = MessageRequest(
        recipient_set=verdict.name,
        recipient_params=verdict.params,
        subject=form.data.get("subject", ""),
        text_body=form.data.get("text_body", ""),
        html_body=form.data.get("html_body", ""),
    )
    result = audience.summarise(probe)
    if result.error:  # the recipient set itself failed (dbmail.content.audience)
        return JsonResponse({**answer, "ok": False, "errors": [result.error], "count": None})
    columns = verdict.params.get("columns", []) if verdict.name == "addresses" else []
    return JsonResponse({**answer, "columns": columns, **result.as_dict()})


def _known_extras(request):
    """The draft's own context (?request=<id>) and the recipients' columns as the form now has them."""
    draft = None
    pk = request.GET.get("request", "")
    if pk.isdigit():
        draft = MessageRequest.objects.filter(pk=pk).only("context", "recipient_set", "recipient_params").first()
    columns = ()
    if "source" in request.POST:  # the compose form (the template page has no recipients)
        form = ComposeForm(request.POST, request.FILES, instance=MessageRequest(), user=request.user)
        form.is_valid()  # fills the recipients' verdict, CSV columns included
        columns = variables.columns_of(form.verdict.name, form.verdict.params)
    if draft is not None and not columns:
        columns = variables.columns_of(draft.recipient_set, draft.recipient_params)
    return (draft.context if draft is not None else None), columns


@require_POST
@panel_view
def check(request):
    """The templates as typed: their errors (the check saving makes) and a rendered preview (JSON).

    Serves the compose page and the template page. The preview is rendered for
    the signed-in user as the recipient (CSV columns are empty), with the
    unsubscribe footer where the body has no link of its own.
    """
    body_format = request.POST.get("body_format", BodyFormat.HTML)
    if body_format not in BodyFormat.values:
        body_format = BodyFormat.HTML
    text_body = request.POST.get("text_body", "")
    probe = MessageRequest(
        subject=request.POST.get("subject", ""),
        text_body=text_body,
        html_body=authoring.html_body(body_format, text_body, request.POST.get("html_body", "")),
        body_format=body_format,
    )
    errors = rendering.template_errors(probe)
    probe.context, columns = _known_extras(request)
    answer = {
        "ok": not errors,
        "errors": errors,
        "html_body": probe.html_body,
        "warnings": variables.warnings_for(probe, columns),
    }
    try:
        shown = preview.sample(probe, request.user)
    except RenderError as exc:
        answer["preview_error"] = str(exc)
    else:
        answer["preview"] = {"subject": shown.subject, "text": shown.text, "html": shown.html}
    return JsonResponse(answer)
