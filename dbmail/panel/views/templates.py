"""Saved templates and the built-in starters: starting points for composing, each with its preview and variables."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dbmail import audit
from dbmail.content import audience, rendering, starters, variables
from dbmail.exceptions import RenderError
from dbmail.models import EmailTemplate
from dbmail.panel import preview
from dbmail.panel.forms import EmailTemplateForm
from dbmail.panel.views.access import panel_view


def variables_of(template):
    """The variables a template prints, in order of first use."""
    return audience.printed_variables(template.subject, template.text_body, template.html_body)


@panel_view
def template_list(request):
    saved = list(EmailTemplate.objects.select_related("updated_by"))
    for template in saved:
        template.variables = variables_of(template)
    shown = []
    for starter in starters.STARTERS:
        try:
            html = preview.sample(starter, request.user).html
        except RenderError as exc:  # a starter is ours; still, a broken one must not take the page down
            html = f"<p>{exc}</p>"
        shown.append({"starter": starter, "html": html, "variables": variables_of(starter)})
    return render(request, "commpanel/template_list.html", {"templates": saved, "starters": shown})


@panel_view
def template_edit(request, pk=None):
    template = get_object_or_404(EmailTemplate, pk=pk) if pk else EmailTemplate()
    initial = None
    starter = starters.get(request.GET.get("starter", "")) if pk is None else None
    if starter is not None:  # "Save as my template": the starter's content, to change and keep
        initial = {
            "name": starter.name,
            "subject": starter.subject,
            "body_format": starter.body_format,
            "text_body": starter.text_body,
            "html_body": starter.html_body,
        }
    form = EmailTemplateForm(request.POST or None, instance=template, initial=initial)
    if request.method == "POST" and form.is_valid():
        template = form.save(commit=False)
        template.updated_by = request.user
        template.save()
        audit.record(request.user, "edit template" if pk else "create template", template)
        messages.success(request, f"Template “{template.name}” saved.")
        # Saved all the same: a CSV column of that name may fill it when the template is used.
        for warning in variables.warnings_for(template, columns=()):
            messages.warning(request, f"{warning} (A CSV column of that name would fill it.)")
        return redirect("commpanel:templates")
    names = list(rendering.RECIPIENT_VARIABLES) + list(rendering.SITE_VARIABLES)
    return render(
        request,
        "commpanel/template_edit.html",
        {"form": form, "template": template, "variables": names, "used": variables_of(template)},
    )


@require_POST
@panel_view
def template_delete(request, pk):
    template = get_object_or_404(EmailTemplate, pk=pk)
    audit.record(request.user, "delete template", template)
    template.delete()
    messages.success(request, f"Template “{template.name}” deleted.")
    return redirect("commpanel:templates")
