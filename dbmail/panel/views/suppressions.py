"""The suppression list: addresses that get no more mail (unsubscribed, bounced, blocked by hand)."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from dbmail import audit
from dbmail.conf import settings as conf
from dbmail.models import Suppression
from dbmail.panel.forms import SuppressionForm
from dbmail.panel.views.access import panel_view


@panel_view
def suppression_list(request):
    rows = Suppression.objects.order_by("-created_at", "address")
    query = request.GET.get("q", "").strip()
    if query:
        rows = rows.filter(address__icontains=query)
    reason = request.GET.get("reason", "")
    if reason in Suppression.Reason.values:
        rows = rows.filter(reason=reason)
    form = SuppressionForm(request.POST or None, initial={"reason": Suppression.Reason.MANUAL})
    if request.method == "POST" and form.is_valid():
        added = form.save()
        audit.record(request.user, "suppress", added, detail=f"{added.reason}: {added.note}")
        messages.success(request, f"{added.address} gets no more mail.")
        return redirect("commpanel:suppressions")
    page = Paginator(rows, conf.DBMAIL_PANEL_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "commpanel/suppression_list.html",
        {"page": page, "form": form, "query": query, "reason": reason, "reasons": Suppression.Reason.choices},
    )


@panel_view
def suppression_edit(request, pk):
    row = get_object_or_404(Suppression, pk=pk)
    form = SuppressionForm(request.POST or None, instance=row)
    if request.method == "POST" and form.is_valid():
        form.save()
        audit.record(request.user, "change suppression", row, detail=f"{row.reason}: {row.note}")
        messages.success(request, f"{row.address} updated.")
        return redirect("commpanel:suppressions")
    return render(request, "commpanel/suppression_edit.html", {"form": form, "row": row})


@require_POST
@panel_view
def suppression_delete(request, pk):
    row = get_object_or_404(Suppression, pk=pk)
    audit.record(request.user, "unsuppress", row, detail=f"was {row.reason}: {row.note}")
    row.delete()
    messages.success(request, f"{row.address} removed from the list: it will get mail again.")
    return redirect("commpanel:suppressions")
