"""Domain literals (user@[127.0.0.1], user@[IPv6:::1]) are refused at every intake, row by row.

An address literal would make the MTA connect to whatever host it names,
internal ones included. The rule is one (dbmail.content.addresses.error), so
each intake reports it as it reports any bad address: the row is recorded
with its reason and skipped, and the rest goes on.
"""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from dbmail.content.recipients import normalise_address
from dbmail.intake import outbox, spool
from dbmail.models import MessageRequest, TextOfEmail

from .factories import SenderAccountFactory
from .sendingapi import client_for, composer
from .spoolfiles import item, xml

pytestmark = pytest.mark.django_db
E = TextOfEmail.Status
LITERALS = ["user@[127.0.0.1]", "user@[IPv6:::1]"]


def why(address):
    address = normalise_address(address)  # as every intake trims it and lower-cases the domain
    return f"domain literal refused in {address!r}: mail goes to domain names only, never to a host named by its IP address"


@pytest.fixture(autouse=True)
def office():
    return SenderAccountFactory(address="office@example.org")


@pytest.mark.parametrize("address", LITERALS)
def test_enqueue_makes_a_dropped_email_with_the_reason(address):
    email = outbox.enqueue(address, "Your code", "1234", from_email="office@example.org")
    assert (email.status, email.last_error) == (E.DROPPED, why(address))
    assert email.events.get().text == why(address)


def test_the_spool_drops_the_item_and_takes_the_rest():
    record = spool.SpoolFile.objects.create(name="a.xml", sha256="0" * 64, location="a.xml")
    items = [item(address=a, sender="office@example.org") for a in [*LITERALS, "ann@example.net"]]
    spool.create_emails(record, spool.parse(xml(*items)), timezone.now())
    made = [(e.status, e.last_error) for e in TextOfEmail.objects.order_by("pk")]
    assert made == [*((E.DROPPED, why(a)) for a in LITERALS), (E.QUEUED, "")]


def test_the_api_names_the_bad_rows_and_skips_them_when_asked():
    api = client_for(composer("ann"))
    request = {
        "sender": "office@example.org",
        "subject": "Hi",
        "text_body": "Hello",
        "rows": ["ann@example.net", *LITERALS],
    }
    refused = api.post("/api/v1/requests/", request, format="json")
    assert refused.status_code == 400
    assert refused.json()["rows"][1:] == [f"row {n}: {why(a)}" for n, a in enumerate(LITERALS, 2)]
    made = api.post("/api/v1/requests/", {**request, "skip_bad_rows": True}, format="json")
    assert made.status_code == 201 and made.json()["recipient_params"]["rows"] == 1
    one = api.post("/api/v1/send/", {"to": LITERALS[0], "subject": "s", "text": "t"}, format="json")
    assert one.status_code == 400 and why(LITERALS[0]) in str(one.json())
    assert not TextOfEmail.objects.exists()


def test_a_panel_audience_pasted_or_uploaded_leaves_them_out_with_the_reason(panel):
    sender = SenderAccountFactory()
    form = {"sender": sender.pk, "reply_to": "", "subject": "Hi", "text_body": "Hello", "html_body": ""}
    pasted = panel.post(reverse("commpanel:compose"), {**form, "source": "paste", "addresses": "\n".join(LITERALS)})
    assert list(pasted.context["form"].errors["addresses"])[1:] == [
        f"line {n}: {why(a)}" for n, a in enumerate(LITERALS, 1)
    ]
    csv = "email\nann@example.net\n" + "".join(f"{a}\n" for a in LITERALS)
    upload = SimpleUploadedFile("people.csv", csv.encode(), content_type="text/csv")
    response = panel.post(
        reverse("commpanel:compose"), {**form, "source": "csv", "csv_file": upload, "skip_bad": "on"}, follow=True
    )
    mail = MessageRequest.objects.get()
    assert [r["email"] for r in mail.recipient_params["rows"]] == ["ann@example.net"]
    shown = " ".join(str(m) for m in response.context["messages"])
    assert f"line 3: {why(LITERALS[0])}" in shown and f"line 4: {why(LITERALS[1])}" in shown
