"""Saved templates: starting points for composing."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dbmail import audit
from dbmail.models import EmailTemplate
from dbmail.panel.forms import EmailTemplateForm
from dbmail.panel.views.access import panel_view


@panel_view
def template_list(request):
    return render(request, "commpanel/template_list.html", {"templates": EmailTemplate.objects.all()})


@panel_view
def template_edit(request, pk=None):
    template = get_object_or_404(EmailTemplate, pk=pk) if pk else EmailTemplate()
    form = EmailTemplateForm(request.POST or None, instance=template)
    if request.method == "POST" and form.is_valid():
        template = form.save(commit=False)
        template.updated_by = request.user
        template.save()
        audit.record(request.user, "edit template" if pk else "create template", template)
        messages.success(request, f"Template “{template.name}” saved.")
        return redirect("commpanel:templates")
    return render(request, "commpanel/template_edit.html", {"form": form, "template": template})


@require_POST
@panel_view
def template_delete(request, pk):
    template = get_object_or_404(EmailTemplate, pk=pk)
    audit.record(request.user, "delete template", template)
    template.delete()
    messages.success(request, f"Template “{template.name}” deleted.")
    return redirect("commpanel:templates")
