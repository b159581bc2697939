import pytest

from mailgate.models import InboundMessage

from .conftest import subprocess_env
from .factories import EmailListFactory, mail_fixture
from .test_mailgate_gate import run_gate

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_script_routes_a_message(smtp_server):
    EmailListFactory(regex="desk", addresses="desk-person@example.org")
    proc = run_gate(
        mail_fixture("plain.eml"),
        "--recipient",
        "desk@example.org",
        "--sender",
        "ann@example.com",
        env=subprocess_env(smtp=smtp_server),
        script=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"mailgate: forwarded to 1 member(s)\n"
    assert [m.rcpt_tos for m in smtp_server.received] == [["desk-person@example.org"]]


def test_broken_settings_answer_75_not_a_traceback():
    proc = run_gate(
        mail_fixture("plain.eml"),
        "--recipient",
        "desk@example.org",
        script=True,
        env=subprocess_env(DBMAIL_BATCH_SIZE="ten"),
    )
    assert proc.returncode == 75
    assert b"temporary failure (configuration)" in proc.stderr and b"DBMAIL_BATCH_SIZE" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not InboundMessage.objects.exists()


def test_a_wrong_command_line_answers_75():
    proc = run_gate(mail_fixture("plain.eml"), "--no-such-option", script=True)
    assert proc.returncode == 75
