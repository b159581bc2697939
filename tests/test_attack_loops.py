"""Attack (issue 12, 4): mail that went out through one of our lists comes back to a list.

Every mark a forward carries (the signed tracking header, X-Loop, our List-Id)
must stop it on its own, whichever of the others a forwarder stripped; the
first test is the attack as reported: our list's own List-Id without X-Loop.
"""

import re

import pytest

from dbmail.models import TextOfEmail
from dbmail.track.header import TRACKING_HEADER, email_pk_from_tracking_id, tracking_id
from mailgate.gate import receive as gate
from mailgate.models import EmailList, InboundMessage

from .conftest import subprocess_env
from .factories import EmailListFactory, UserFactory, mail_fixture
from .test_mailgate_gate import run_gate

LIST = "physics@lists.example.org"
MARKS = {
    "tracking": rb"(?im)^X-Mailsite-Email:[^\n]*\n",
    "x-loop": rb"(?im)^X-Loop:[^\n]*\n",
    "list-id": rb"(?im)^List-Id:[^\n]*\n",
}


@pytest.fixture
def physics(db):
    ann = UserFactory(username="ann", email="ann@example.com", first_name="Ann", last_name="Smith")
    bob = UserFactory(username="bob", email="bob@example.net")
    return EmailListFactory(name="Physics", regex="physics", users=[ann, bob], posting_policy=EmailList.Policy.ANYONE)


def with_header(field):
    return mail_fixture("plain.eml").replace(b"Subject:", field + b"\nSubject:", 1)


def gate_run(raw, recipient=LIST, sender="ann@example.com"):
    result = gate.run(raw, recipient, sender)
    return InboundMessage.objects.get(pk=result.inbound_id)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_our_own_list_id_without_x_loop_is_a_loop_through_the_pipe(physics, smtp_server):
    raw = with_header(b"List-Id: Physics <physics.lists.example.org>")
    proc = run_gate(raw, "--recipient", LIST, "--sender", "ann@example.com", env=subprocess_env(smtp=smtp_server))
    assert proc.returncode == 0, proc.stderr
    inbound = InboundMessage.objects.get()
    assert inbound.status == "loop" and "List-Id" in inbound.note
    assert bytes(inbound.raw) == raw
    assert not TextOfEmail.objects.exists() and not smtp_server.received


@pytest.mark.django_db
def test_the_list_id_x_loop_and_tracking_header_of_any_list_of_ours_are_loops(physics):
    EmailListFactory(name="Staff", regex=r"staff\.all", posting_policy=EmailList.Policy.ANYONE)
    email = TextOfEmail.objects.create(to_address="x@example.net", from_header="a@example.org", message_id="<t@x>")
    for field in (
        b"List-Id: Staff <staff-all.lists.example.org>",  # another list of ours (its dot made a hyphen)
        b"X-Loop: staff.all@lists.example.org",
        f"{TRACKING_HEADER}: {tracking_id(email.pk)}".encode(),
    ):
        inbound = gate_run(with_header(field))
        assert inbound.status == "loop", field


@pytest.mark.django_db
def test_marks_that_are_not_ours_do_not_stop_mail(physics):
    for field in (
        b"List-Id: Physics <physics.elsewhere.example.com>",  # someone else's list of the same name
        b"X-Loop: physics@elsewhere.example.com",
        f"{TRACKING_HEADER}: 1:forged-signature".encode(),
    ):
        inbound = gate_run(with_header(field))
        assert inbound.status == "forwarded", field


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_forward_carries_every_mark_and_each_alone_stops_it_coming_back(physics, smtp_server):
    env = subprocess_env(smtp=smtp_server)
    proc = run_gate(mail_fixture("plain.eml"), "--recipient", LIST, "--sender", "ann@example.com", env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(smtp_server.received) == 2
    for received in smtp_server.received:  # each copy names its own outbox row, signed
        header = received.message[TRACKING_HEADER]
        email = TextOfEmail.objects.get(pk=email_pk_from_tracking_id(header))
        assert email.to_address == received.rcpt_tos[0] and email.message_id == received.message_id
    copy = smtp_server.received[0].data.replace(b"\r\n", b"\n")
    for kept, pattern in MARKS.items():
        stripped = copy
        for other, other_pattern in MARKS.items():
            if other != kept:
                stripped = re.sub(other_pattern, b"", stripped)
        assert re.search(pattern, stripped), kept
        proc = run_gate(stripped, "--recipient", LIST, "--sender", "bob@example.net", env=env)
        assert proc.returncode == 0, proc.stderr
        inbound = InboundMessage.objects.order_by("-id").first()
        assert inbound.status == "loop", (kept, inbound.note)
    assert len(smtp_server.received) == 2  # nothing went out again
