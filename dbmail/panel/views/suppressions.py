"""The suppression list: addresses that get no more mail (unsubscribed, bounced, blocked by hand)."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from dbmail import audit
from dbmail.conf import settings as conf
from dbmail.content import csvmerge, lifting, suppression_csv
from dbmail.content.addresses import key_fragment
from dbmail.exceptions import CSVError
from dbmail.models import Suppression
from dbmail.panel.forms import SuppressionForm, SuppressionImportForm
from dbmail.panel.views.access import panel_view


def _filtered(request):
    rows = Suppression.objects.order_by("-created_at", "address")
    query = request.GET.get("q", "").strip()
    if query:
        # The list holds mailbox keys (domains in A-labels): "bücher" finds anna@xn--bcher-kva.example too.
        rows = rows.filter(Q(address__icontains=query) | Q(address__icontains=key_fragment(query)))
    reason = request.GET.get("reason", "")
    if reason in Suppression.Reason.values:
        rows = rows.filter(reason=reason)
    return rows, query, reason


@panel_view
def suppression_list(request):
    rows, query, reason = _filtered(request)
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
        {
            "page": page,
            "form": form,
            "import_form": SuppressionImportForm(),
            "query": query,
            "reason": reason,
            "reasons": Suppression.Reason.choices,
            "may_lift_protected": request.user.has_perm(lifting.PERMISSION),
            "protected": lifting.PROTECTED,
        },
    )


@panel_view
def suppression_edit(request, pk):
    row = get_object_or_404(Suppression, pk=pk)
    was = f"{row.address} ({row.reason})"
    form = SuppressionForm(request.POST or None, instance=row, may_lift=lifting.may_lift(request.user, row))
    if request.method == "POST" and form.is_valid():
        form.save()
        detail = f"{row.reason}: {row.note}"
        if any(name in form.changed_data for name in lifting.LIFTING_FIELDS):
            detail = f"was {was}; now {detail}"
        audit.record(request.user, "change suppression", row, detail=detail)
        messages.success(request, f"{row.address} updated.")
        return redirect("commpanel:suppressions")
    return render(request, "commpanel/suppression_edit.html", {"form": form, "row": row})


@require_POST
@panel_view
def suppression_delete(request, pk):
    row = get_object_or_404(Suppression, pk=pk)
    if not lifting.may_lift(request.user, row):
        messages.error(request, lifting.refusal(row))
        return render(request, "commpanel/suppression_refused.html", {"row": row}, status=403)
    audit.record(request.user, "unsuppress", row, detail=f"was {row.reason}: {row.note}")
    row.delete()
    messages.success(request, f"{row.address} removed from the list: it will get mail again.")
    return redirect("commpanel:suppressions")


@panel_view
def suppression_export(request):
    """The list (as filtered on the page) as CSV, streamed: a list of a million addresses is fine."""
    rows, _, _ = _filtered(request)
    response = StreamingHttpResponse(suppression_csv.export_rows(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="suppressions-{timezone.localdate():%Y-%m-%d}.csv"'
    return response


@require_POST
@panel_view
def suppression_import(request):
    form = SuppressionImportForm(request.POST, request.FILES)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
        return redirect("commpanel:suppressions")
    upload = form.cleaned_data["file"]
    try:
        result = suppression_csv.import_csv(upload.read(), form.cleaned_data["reason"], form.cleaned_data["note"])
    except CSVError as exc:
        messages.error(request, f"{upload.name}: {exc}")
        return redirect("commpanel:suppressions")
    added = Suppression.objects.filter(address__in=result.addresses)
    audit.record_many(request.user, "suppress", added, detail=f"imported from {upload.name}")
    messages.success(
        request,
        f"{upload.name}: {result.added} address(es) added; {result.already} already on the list, left as they were.",
    )
    if result.bad:
        lines = csvmerge.describe_bad(result.bad)
        messages.warning(request, f"{len(result.bad)} bad row(s) skipped: " + "; ".join(lines))
    return redirect("commpanel:suppressions")
