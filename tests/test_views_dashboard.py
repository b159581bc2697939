"""The dashboard page: range choice, totals and rates, per day and per account, from the roll-up."""

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from dbmail import rollup
from dbmail.models import SenderAccount, Suppression

from .factories import SenderAccountFactory

pytestmark = pytest.mark.django_db
URL = reverse("commpanel:dashboard")


def chart(response):
    html = response.content.decode()
    start = html.index('<script id="dashboard-data" type="application/json">') + len(
        '<script id="dashboard-data" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def test_last_30_days_by_default_with_totals_rates_and_every_day(panel):
    today = timezone.localdate()
    office = SenderAccountFactory()
    rollup.count([(today, office.pk, None, "sent")] * 8 + [(today, office.pk, None, "delivered")] * 6)
    rollup.count([(today - timedelta(days=29), office.pk, None, "bounced")] * 2)
    rollup.count([(today - timedelta(days=29), office.pk, None, "hard_bounced")])
    rollup.count([(today - timedelta(days=30), office.pk, None, "sent")] * 100)  # the 31st day back: outside
    Suppression.objects.create(address="gone@example.org", reason="unsubscribed")
    response = panel.get(URL)
    assert response.status_code == 200
    figures = response.context["figures"]
    assert (figures.start, figures.end) == (today - timedelta(days=29), today)
    assert figures.total["sent"] == 8 and figures.total["bounced"] == 2 and figures.total["unsubscribed"] == 1
    assert figures.total["hard_bounced"] == 1
    assert response.context["rates"] == {"delivered": 75.0, "bounced": 25.0, "hard_bounced": 12.5, "complained": 0.0}
    data = chart(response)
    assert len(data["days"]) == 30 and data["days"][-1] == today.isoformat()
    assert data["series"]["sent"][-1] == 8 and data["series"]["bounced"][0] == 2
    assert data["series"]["hard_bounced"][0] == 1 and data["per_account"]["hard_bounced"] == [1]
    assert data["accounts"] == ["office@example.org"] and data["per_account"]["delivered"] == [6]
    html = response.content.decode()
    assert "75.0 % of sent" in html
    assert 'data-measure="hard_bounced"><span class="tile-label">Hard bounced</span> <b class="tile-n">1</b>' in html
    assert "<th>Hard bounced</th>" in html
    assert 'href="/commpanel/dashboard/"' in html and 'aria-current="page">Dashboard' in html


def test_any_range_by_from_and_to(panel):
    rollup.count([(timezone.datetime(2026, 3, 3).date(), None, None, "sent")])
    response = panel.get(URL + "?from=2026-03-01&to=2026-03-05")
    data = chart(response)
    assert data["days"] == [f"2026-03-0{n}" for n in range(1, 6)]
    assert data["series"]["sent"] == [0, 0, 1, 0, 0]
    assert data["accounts"] == ["No sender account (outbox, forwards)"]
    assert 'value="2026-03-01"' in response.content.decode()


@pytest.mark.parametrize(
    "query, message",
    [
        ("?from=2026-03-05&to=2026-03-01", "“From” is after “To”"),
        ("?from=yesterday", "Enter a valid date."),
        ("?from=2020-01-01&to=2026-01-01", "Choose at most 732 days."),
    ],
)
def test_a_bad_range_says_why_and_shows_the_default(panel, query, message):
    response = panel.get(URL + query)
    assert response.status_code == 200
    html = response.content.decode()
    assert message in html and "Showing the last 30 days instead." in html
    assert len(chart(response)["days"]) == 30


def test_accounts_by_most_sent_with_deleted_ones_named(panel):
    today = timezone.localdate()
    small = SenderAccountFactory(address="small@example.org")
    big = SenderAccountFactory(address="big@example.org")
    rollup.count([(today, small.pk, None, "sent")] + [(today, big.pk, None, "sent")] * 3)
    rollup.count([(today, 9999, None, "sent")] * 2)
    assert not SenderAccount.objects.filter(pk=9999).exists()
    data = chart(panel.get(URL))
    assert data["accounts"] == ["big@example.org", "Deleted account #9999", "small@example.org"]
    assert data["per_account"]["sent"] == [3, 2, 1]


def test_no_mail_sent_shows_dashes_not_zero_rates(panel):
    html = panel.get(URL).content.decode()
    assert "Nothing was sent in these days." in html
    assert "% of sent" not in html


def test_a_box_shows_what_holds_mail_back_now(panel):
    from dbmail.models import MessageRequest
    from dbmail.send import buckets

    from .factories import MessageRequestFactory

    assert "Every destination at full speed" in panel.get(URL).content.decode()
    buckets.push_back("microsoft", 300, "451 4.7.1 rate limited", timezone.now())
    mail = MessageRequestFactory(status=MessageRequest.Status.PAUSED, paused_reason="too many complaints")
    html = panel.get(URL).content.decode()
    assert "<b>microsoft</b> pushed back: 150 a minute instead of 300 since" in html
    assert "451 4.7.1 rate limited" in html
    assert f'href="{reverse("commpanel:request", args=[mail.pk])}"' in html and "too many complaints" in html
