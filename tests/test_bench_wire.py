"""The benchmark's ceiling clients (bench/wire.py) against its sink: every message arrives once, dots stuffed."""

import json
import signal
import subprocess
import sys

import pytest

from bench import wire

from .conftest import ROOT


@pytest.fixture
def sink(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "sink.py"), "--report", str(report)], stdout=subprocess.PIPE, text=True
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


def messages(n):
    return [
        (
            "office@example.org",
            [f"reader{i}@example.net"],
            f"Message-ID: <{i}@bench>\r\nSubject: {i}\r\n\r\n.a line with a leading dot\r\nmessage {i}\r\n".encode(),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("client", ["pipelined", "smtplib"])
def test_every_message_arrives_once(sink, client):
    port, stop = sink
    sent = messages(25)
    if client == "pipelined":
        assert wire.pipelined("127.0.0.1", port, wire.prepare(sent)) == 25
    else:
        assert wire.smtplib_client("127.0.0.1", port, sent) == 25
    report = stop()
    assert (report["messages"], report["unique"], report["duplicates"], report["duplicate_recipients"]) == (
        25,
        25,
        0,
        0,
    )
    assert report["connections"] == 1


def test_prepare_stuffs_leading_dots_and_ends_with_the_dot():
    ((envelope, content, rcpts),) = wire.prepare([("a@example.org", ["b@example.net"], b".x\r\ny")])
    assert envelope == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    assert content == b"..x\r\ny\r\n.\r\n" and rcpts == 1


def test_a_refusal_stops_the_pipelined_client_with_what_the_server_said(sink):
    port, stop = sink
    bad = [("office@example.org", [], b"Subject: no recipient\r\n\r\nx\r\n")]  # DATA without RCPT: 503
    with pytest.raises(wire.WireError, match="503"):
        wire.pipelined("127.0.0.1", port, wire.prepare(bad))
    stop()
