"""The dashboard: what became of the mail over a range of days, in total, per day and per sender account.

The figures come from the daily roll-up (dbmail.rollup), never from the email table.
"""

from datetime import timedelta

from django.shortcuts import render
from django.utils import timezone

from dbmail import rollup, states
from dbmail.models import MessageRequest, SenderAccount
from dbmail.panel.forms import DashboardForm
from dbmail.panel.views.access import panel_view
from dbmail.send import backoff, buckets, caps

# The range links above the charts.
PRESETS = (7, 30, 90, 365)


@panel_view
def dashboard(request):
    form = DashboardForm({"start": request.GET.get("from", ""), "end": request.GET.get("to", "")})
    start, end = form.days()
    shown = rollup.figures(start, end)
    names = {a.pk: a.address for a in SenderAccount.objects.filter(pk__in=[pk for pk, _ in shown.accounts if pk])}
    accounts = [
        {"name": _account_name(pk, names), "counts": counts, "rates": rollup.rates(counts)}
        for pk, counts in shown.accounts
    ]
    today = timezone.localdate()
    chart = {
        "days": [day.isoformat() for day, _ in shown.days],
        "series": {name: [values[name] for _, values in shown.days] for name in rollup.SHOWN},
        "accounts": [a["name"] for a in accounts],
        "per_account": {name: [a["counts"][name] for a in accounts] for name in rollup.COUNTS},
    }
    return render(
        request,
        "commpanel/dashboard.html",
        {
            "form": form,
            "start": start,
            "end": end,
            "figures": shown,
            "rates": shown.rates,
            "accounts": accounts,
            "chart": chart,
            "measures": rollup.SHOWN,
            "presets": [(n, (today - timedelta(days=n - 1)).isoformat(), today.isoformat()) for n in PRESETS],
            "days_desc": list(reversed(shown.days)),
            "deliverability": deliverability(timezone.now()),
        },
    )


def deliverability(now):
    """What holds mail back right now: slowed destinations, accounts at their daily cap, paused requests."""
    slowed = [
        {
            "name": b.name,
            "rate": backoff.effective_rate(b, now) or backoff.target(b.configured_per_minute),
            "configured": b.configured_per_minute,
            "since": b.slowed_since,
            "pushbacks": b.pushbacks,
            "text": b.pushback_text,
            "recovers_at": backoff.recovered_at(b, now),
        }
        for b in buckets.slowed(now)
    ]
    paused = list(MessageRequest.objects.filter(status=states.RequestStatus.PAUSED).order_by("paused_at")[:10])
    return {"slowed": slowed, "capped": caps.reached(now), "stopped": paused, "next_day": caps.next_day(now)}


def _account_name(pk, names):
    if pk is None:
        return "No sender account (outbox, forwards)"
    return names.get(pk, f"Deleted account #{pk}")
