"""The demo's capture server: every message, each envelope recipient, saved as a file."""

import smtplib
import socket

from dbmail.ops.capture import serve


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_recipient_gets_a_file_with_the_envelope(tmp_path):
    port = free_port()
    controller = serve(tmp_path / "mail", port=port)
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            for n in range(20):
                client.sendmail(
                    "from@example.org", [f"a{n}@example.org", f"b{n}@example.org"], b"Subject: x\r\n\r\nhi\r\n"
                )
        controller.handler.flush()
        files = sorted((tmp_path / "mail").iterdir())
        assert len(files) == 40
    finally:
        controller.stop()
    first = (tmp_path / "mail" / next(f.name for f in files if "a0@" in f.name)).read_bytes()
    assert first.startswith(b"X-Envelope-From: from@example.org\r\nX-Envelope-To: a0@example.org\r\n")
    assert first.endswith(b"hi\r\n")


def test_stopping_saves_what_was_answered(tmp_path):
    port = free_port()
    controller = serve(tmp_path / "mail", port=port)
    with smtplib.SMTP("127.0.0.1", port) as client:
        for n in range(50):
            client.sendmail("from@example.org", [f"r{n}@example.org"], b"Subject: x\r\n\r\nhi\r\n")
    controller.stop()  # no flush: stop itself waits for the writer
    assert len(list((tmp_path / "mail").iterdir())) == 50
