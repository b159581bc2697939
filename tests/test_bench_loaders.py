"""The benchmarks' bulk loaders keep up with the email table's schema (a NOT NULL column added later loads too)."""

import argparse
import os

import pytest

from bench import dashboard, history
from dbmail.models import TextOfEmail

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="the loaders use generate_series"
)


def test_every_column_a_loader_does_not_give_gets_its_model_default():
    given = {f.attname for f in TextOfEmail._meta.concrete_fields} - {"possibly_delivered", "dest_group"}
    columns, placeholders, defaults = history.other_email_columns(given)
    assert columns == ", possibly_delivered, dest_group" or columns == ", dest_group, possibly_delivered"
    assert placeholders == ", %s, %s"
    by_column = dict(zip(columns.strip(", ").split(", "), defaults, strict=True))
    assert by_column == {"possibly_delivered": 0, "dest_group": None}


@pytest.mark.django_db
def test_the_dashboard_loader_loads_into_the_current_schema():
    requests = dashboard.load(argparse.Namespace(rows=600, days=3, requests=6, accounts=2))
    emails = TextOfEmail.objects.all()
    assert emails.count() == 600
    assert set(emails.values_list("request_id", flat=True)) == {r.pk for r in requests}
    assert set(emails.values_list("possibly_delivered", flat=True)) == {0}
    # The outcome mix of the bench: mostly delivered, each kind present.
    statuses = set(emails.values_list("status", flat=True))
    assert {"delivered", "sent", "bounced", "dropped"} <= statuses
