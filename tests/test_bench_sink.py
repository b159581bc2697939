"""The benchmark's SMTP sink: smtplib can send to it, and it counts what arrived per Message-ID."""

import json
import signal
import smtplib
import subprocess
import sys
from email.message import EmailMessage

import pytest

from .conftest import ROOT


@pytest.fixture
def sink(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "sink.py"), "--report", str(report)],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(proc.stdout.readline())

    def stop():
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        return json.loads(report.read_text())

    yield port, stop
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def message(message_id, body="Hello.\n"):
    msg = EmailMessage()
    msg["From"] = "office@example.org"
    msg["To"] = "ann@example.org"
    msg["Subject"] = "Test"
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    return msg


def test_counts_messages_duplicates_and_missing_ids(sink):
    port, stop = sink
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.ehlo()
        for mid in ("<a@bench>", "<b@bench>", "<a@bench>", None):
            refused = smtp.send_message(message(mid))
            assert refused == {}
        code, text = smtp.noop()
        assert code == 250
    # A second connection sending an ID the first already sent is a duplicate too.
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.helo()
        smtp.send_message(message("<b@bench>", body=".a line starting with a dot\n\n.\n"))

    report = stop()
    assert report["messages"] == 5
    assert report["connections"] == 2
    assert report["unique"] == 2
    assert report["duplicates"] == 2
    assert report["without_message_id"] == 1
    assert sorted(report["message_ids"]) == ["<a@bench>", "<b@bench>"]


def test_answers_data_with_a_queue_id_and_enforces_order(sink):
    port, stop = sink
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("pipelining")
        assert smtp.docmd("DATA")[0] == 503  # no MAIL/RCPT yet
        assert smtp.docmd("RCPT", "TO:<ann@example.org>")[0] == 503
        assert smtp.docmd("VRFY", "ann")[0] == 502
        smtp.mail("office@example.org")
        smtp.rcpt("ann@example.org")
        code, text = smtp.data(message("<c@bench>").as_bytes())
        assert code == 250
        assert text.startswith(b"2.0.0 Ok: queued as ")
        assert smtp.rset()[0] == 250

    report = stop()
    assert (report["messages"], report["duplicates"]) == (1, 0)
