"""The suppression list page: see, search, add, edit, remove."""

import pytest
from django.urls import reverse

from dbmail.models import Suppression

pytestmark = pytest.mark.django_db


def test_list_search_and_filter(panel):
    Suppression.objects.create(address="ann@example.org", reason="unsubscribed")
    Suppression.objects.create(address="bob@example.org", reason="bounced")
    page = panel.get(reverse("commpanel:suppressions"))
    assert {r.address for r in page.context["page"]} == {"ann@example.org", "bob@example.org"}
    page = panel.get(reverse("commpanel:suppressions") + "?q=ann")
    assert [r.address for r in page.context["page"]] == ["ann@example.org"]
    page = panel.get(reverse("commpanel:suppressions") + "?reason=bounced")
    assert [r.address for r in page.context["page"]] == ["bob@example.org"]


def test_add_lower_cases_and_refuses_duplicates(panel):
    panel.post(
        reverse("commpanel:suppressions"), {"address": "Ann@Example.org", "reason": "manual", "note": "asked by phone"}
    )
    row = Suppression.objects.get()
    assert (row.address, row.note) == ("ann@example.org", "asked by phone")
    response = panel.post(reverse("commpanel:suppressions"), {"address": "ANN@example.org", "reason": "manual"})
    assert "already on the list" in response.context["form"].errors["address"][0]
    response = panel.post(reverse("commpanel:suppressions"), {"address": "nope", "reason": "manual"})
    assert "address" in response.context["form"].errors
    assert Suppression.objects.count() == 1


def test_edit_and_remove(panel):
    row = Suppression.objects.create(address="ann@example.org", reason="bounced")
    panel.post(
        reverse("commpanel:suppression_edit", args=[row.pk]),
        {"address": "ann@example.org", "reason": "manual", "note": "x"},
    )
    row.refresh_from_db()
    assert (row.reason, row.note) == ("manual", "x")
    panel.post(reverse("commpanel:suppression_delete", args=[row.pk]))
    assert not Suppression.objects.exists()


def test_each_row_says_what_it_stops(panel):
    Suppression.objects.create(address="ann@example.org", reason="unsubscribed")
    Suppression.objects.create(address="bob@example.org", reason="bounced")
    html = panel.get(reverse("commpanel:suppressions")).content.decode()
    assert "<th>Stops</th>" in html
    rows = {line.split("</td>")[0].split("<td>")[-1]: line for line in html.splitlines() if "suppression-stops" in line}
    assert '<td class="suppression-stops">bulk mail only</td>' in rows["ann@example.org"]
    assert '<td class="suppression-stops">all mail</td>' in rows["bob@example.org"]
