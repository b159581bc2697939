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
    # A block added by hand: any panel user may lift it (protected ones: tests/test_lifting.py).
    row = Suppression.objects.create(address="ann@example.org", reason="manual")
    panel.post(
        reverse("commpanel:suppression_edit", args=[row.pk]),
        {"address": "ann@example.org", "reason": "manual", "note": "x"},
    )
    row.refresh_from_db()
    assert (row.reason, row.note) == ("manual", "x")
    panel.post(
        reverse("commpanel:suppression_edit", args=[row.pk]),
        {"address": "ann@example.org", "reason": "unsubscribed", "note": "x"},
    )
    row.refresh_from_db()
    assert row.reason == "unsubscribed"
    row.reason = "manual"
    row.save()
    panel.post(reverse("commpanel:suppression_delete", args=[row.pk]))
    assert not Suppression.objects.exists()


def test_export_is_a_csv_of_the_list_as_filtered(panel):
    import csv
    import io

    Suppression.objects.create(address="ann@example.org", reason="unsubscribed", note='said "stop", twice')
    Suppression.objects.create(address="bob@example.org", reason="bounced")
    response = panel.get(reverse("commpanel:suppression_export"))
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment; filename=" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["address", "reason", "note", "created_at"]
    assert {r[0]: r[1:3] for r in rows[1:]} == {
        "ann@example.org": ["unsubscribed", 'said "stop", twice'],
        "bob@example.org": ["bounced", ""],
    }
    only = panel.get(reverse("commpanel:suppression_export") + "?reason=bounced")
    assert b"".join(only.streaming_content).decode().count("\n") == 2


def upload(text, name="old-tool.csv"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def test_import_adds_new_addresses_keeps_known_ones_and_lists_bad_rows(panel):
    Suppression.objects.create(address="known@example.org", reason="bounced", note="from a bounce")
    csv_text = (
        "Email Address,Reason,Note\n"
        "New@Example.ORG,unsubscribed,\n"
        "known@example.org,manual,overwritten?\n"
        "foo@,,\n"
        "plain@example.org,whatever,\n"
        "new@example.org,,again\n"
    )
    response = panel.post(
        reverse("commpanel:suppression_import"),
        {"file": upload(csv_text), "reason": "manual", "note": "imported"},
        follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert "old-tool.csv: 2 address(es) added; 1 already on the list, left as they were." in shown
    assert "1 bad row(s) skipped: line 4: invalid address 'foo@'" in shown
    rows = {s.address: (s.reason, s.note) for s in Suppression.objects.all()}
    assert rows == {
        "known@example.org": ("bounced", "from a bounce"),  # history is not rewritten
        "new@example.org": ("unsubscribed", "imported"),
        "plain@example.org": ("manual", "imported"),  # an unknown reason takes the form's
    }
    from dbmail.models import AuditEvent

    events = AuditEvent.objects.filter(action="suppress")
    assert sorted(e.target for e in events) == ["new@example.org (unsubscribed)", "plain@example.org (manual)"]
    assert {e.actor_name for e in events} == {"editor"} and {e.detail for e in events} == {"imported from old-tool.csv"}


def test_an_unusable_import_file_is_refused_with_its_reason(panel):
    response = panel.post(
        reverse("commpanel:suppression_import"), {"file": upload("name\nAnn\n"), "reason": "manual"}, follow=True
    )
    assert any("must name the columns" in str(m) for m in response.context["messages"])
    assert not Suppression.objects.exists()


def test_export_then_import_round_trips(panel):
    Suppression.objects.create(address="ann@example.org", reason="complained", note="spam button")
    exported = b"".join(panel.get(reverse("commpanel:suppression_export")).streaming_content).decode()
    Suppression.objects.all().delete()
    panel.post(reverse("commpanel:suppression_import"), {"file": upload(exported), "reason": "manual"})
    assert Suppression.objects.get().reason == "complained" and Suppression.objects.get().note == "spam button"


def test_each_row_says_what_it_stops(panel):
    Suppression.objects.create(address="ann@example.org", reason="unsubscribed")
    Suppression.objects.create(address="bob@example.org", reason="bounced")
    html = panel.get(reverse("commpanel:suppressions")).content.decode()
    assert "<th>Stops</th>" in html
    rows = {line.split("</td>")[0].split("<td>")[-1]: line for line in html.splitlines() if "suppression-stops" in line}
    assert '<td class="suppression-stops">bulk mail only</td>' in rows["ann@example.org"]
    assert '<td class="suppression-stops">all mail</td>' in rows["bob@example.org"]


def test_search_finds_a_mailbox_key_by_any_spelling_of_its_domain(panel, admin_client):
    Suppression.objects.create(address="anna@Bücher.example", reason="bounced")
    Suppression.objects.create(address="bob@example.org", reason="bounced")
    for query in ("bücher", "Anna@BÜCHER.example", "xn--bcher"):
        page = panel.get(reverse("commpanel:suppressions"), {"q": query})
        assert [r.address for r in page.context["page"]] == ["anna@xn--bcher-kva.example"], query
        listed = admin_client.get(reverse("admin:dbmail_suppression_changelist"), {"q": query})
        assert [r.address for r in listed.context["cl"].result_list] == ["anna@xn--bcher-kva.example"], query


def test_add_refuses_another_spelling_of_a_listed_mailbox(panel):
    panel.post(reverse("commpanel:suppressions"), {"address": "anna@bücher.example", "reason": "manual"})
    response = panel.post(
        reverse("commpanel:suppressions"), {"address": "ANNA@xn--bcher-kva.example", "reason": "manual"}
    )
    assert "already on the list" in response.context["form"].errors["address"][0]
    assert list(Suppression.objects.values_list("address", flat=True)) == ["anna@xn--bcher-kva.example"]


def test_the_one_row_forms_say_what_goes_in_each_box(panel):
    """Their labels are hidden to fit one row, so each text box carries a placeholder."""
    page = panel.get(reverse("commpanel:suppressions")).content.decode()
    assert 'placeholder="Address to suppress"' in page
    assert page.count('placeholder="Note (optional)"') == 2  # the add form's and the import form's
