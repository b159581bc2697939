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


# --- the next message's envelope with this message's end: one round trip a message ---


class _StrictPipeliner:
    """A one-connection SMTP server that answers a message's final dot only once the next message's
    DATA has arrived too: a client that waits for that answer before going on never gets it."""

    def __init__(self, expect):
        import socket
        import threading

        self.expect = expect  # messages: the last one's answer cannot wait for a next DATA
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages, self.commands = [], []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        buf = b""

        def line():
            nonlocal buf
            while b"\r\n" not in buf:
                buf += conn.recv(65536)
            head, _, buf = buf.partition(b"\r\n")
            return head

        conn.sendall(b"220 strict\r\n")
        held = None  # the answer to a dot, kept until the next DATA is in
        while True:
            cmd = line()
            self.commands.append(cmd.split(b":")[0].split(b" ")[0].upper())
            verb = self.commands[-1]
            if verb == b"EHLO":
                conn.sendall(b"250-strict\r\n250 PIPELINING\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                reply = b"250 ok\r\n"
                held = held + reply if held else None
                if held is None:
                    conn.sendall(reply)
            elif verb == b"DATA":
                if held:
                    conn.sendall(held + b"354 go\r\n")
                    held = None
                else:
                    conn.sendall(b"354 go\r\n")
                body = []
                while (data := line()) != b".":
                    body.append(data)
                self.messages.append(b"\n".join(body))
                held = b"250 kept %d\r\n" % len(self.messages)
                if len(self.messages) == self.expect:
                    conn.sendall(held)
                    held = None
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                conn.close()
                return


def test_the_next_envelope_goes_with_the_dot_so_a_message_costs_one_round_trip():
    server = _StrictPipeliner(expect=3)
    backend = SMTPBackend(host="127.0.0.1", port=server.port, timeout=2, fail_silently=False)
    bodies = [b"Subject: %d\r\n\r\nmessage %d\r\n" % (i, i) for i in range(3)]
    for i, body in enumerate(bodies):
        then = ("a@example.org", [f"r{i + 1}@example.net"], bodies[i + 1], False) if i + 1 < len(bodies) else None
        backend.send_prepared("a@example.org", [f"r{i}@example.net"], body, then=then)
        assert backend.last_reply == (250, f"kept {i + 1}")
    backend.close()
    server.thread.join(5)
    assert [m.split(b"\n")[-1] for m in server.messages] == [b"message 0", b"message 1", b"message 2"]
    assert server.commands.count(b"MAIL") == 3  # each envelope sent once


def test_a_connection_left_with_an_envelope_ahead_is_aborted_not_quit(server, backend):
    # The next message's DATA may already be open: a QUIT would become its first line.
    then = ("a@example.org", ["c@example.net"], MESSAGE, False)
    backend.send_prepared("a@example.org", ["b@example.net"], MESSAGE, then=then)
    backend.close()
    assert backend.connection is None
    assert [m.rcpt_tos for m in server.received] == [["b@example.net"]]


def test_a_call_for_another_message_than_the_one_sent_ahead_is_refused(server, backend):
    if not server.pipelining:
        pytest.skip("without PIPELINING nothing is sent ahead")
    then = ("a@example.org", ["c@example.net"], MESSAGE, False)
    backend.send_prepared("a@example.org", ["b@example.net"], MESSAGE, then=then)
    with pytest.raises(smtplib.SMTPServerDisconnected) as exc:
        backend.send_prepared("a@example.org", ["d@example.net"], MESSAGE)
    assert exc.value.stage == "mail"  # a session fault: the sender reconnects and tries the email again
    backend.abort()
    backend.send_prepared("a@example.org", ["d@example.net"], MESSAGE)
    assert [m.rcpt_tos for m in server.received] == [["b@example.net"], ["d@example.net"]]
