"""The SMTP backend: the same behaviour with and without PIPELINING, and the server's reply kept."""

import smtplib

import pytest

from dbmail.send.smtp import SMTPBackend

from .smtpserver import SMTPServer

MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: s\r\n\r\n.leading dot\r\nend"


@pytest.fixture(params=[True, False], ids=["pipelining", "classic"])
def server(request):
    srv = SMTPServer(pipelining=request.param).start()
    yield srv
    srv.stop()


@pytest.fixture
def backend(server):
    conn = SMTPBackend(host=server.host, port=server.port, timeout=2, fail_silently=False)
    yield conn
    conn.close()


def test_accepts_and_keeps_the_reply(server, backend):
    backend.send_prepared("a@example.org", ["b@example.net"], MESSAGE)
    code, text = backend.last_reply
    assert code == 250 and text.startswith("2.0.0 Ok: queued as Q")
    (got,) = server.received
    assert got.data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n") + b"\n"
    assert got.rcpt_tos == ["b@example.net"] and got.mail_from == "a@example.org"


def test_refused_recipient(server, backend):
    server.script("b@example.net", "550 5.1.1 no such user")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
        backend.send_prepared("a@example.org", ["b@example.net"], MESSAGE)
    assert exc.value.recipients["b@example.net"][0] == 550
    backend.send_prepared("a@example.org", ["c@example.net"], MESSAGE)  # the connection is still usable
    assert [m.rcpt_tos for m in server.received] == [["c@example.net"]]


def test_some_recipients_refused_still_delivers_to_the_rest(server, backend):
    server.script("b@example.net", "452 4.2.2 full")
    backend.open()
    refused = backend.connection.sendmail("a@example.org", ["b@example.net", "c@example.net"], MESSAGE)
    assert refused == {"b@example.net": (452, b"4.2.2 full")}
    assert [m.rcpt_tos for m in server.received] == [["c@example.net"]]


def test_421_closes_the_connection(server, backend):
    server.script("b@example.net", "421 4.7.0 closing")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        backend.send_prepared("a@example.org", ["b@example.net"], MESSAGE)
    assert backend.connection.sock is None


def test_refused_data(server, backend):
    server.script("b@example.net", "554 5.7.1 spam", stage="message")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        backend.send_prepared("a@example.org", ["b@example.net"], MESSAGE)
    assert exc.value.smtp_code == 554


def test_plain_and_quoted_addresses_reach_the_envelope(server, backend):
    backend.send_prepared("bounces+1.abc@example.org", ['"john doe"@example.net', "Ann <ann@example.net>"], MESSAGE)
    (got,) = server.received
    assert got.mail_from == "bounces+1.abc@example.org"
    assert got.rcpt_tos == ['"john doe"@example.net', "ann@example.net"]
