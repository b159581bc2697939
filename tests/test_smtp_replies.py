"""The bulk backend's own reply reader against smtplib's getreply, on the same bytes over real sockets.

A server here writes scripted bytes in the pieces given (one byte at a time, a line cut in two, a
reply and the next together), then closes or falls silent; both readers must make the same replies,
and fail at the same point with the same error.
"""

import smtplib
import socket
import threading
import time

import pytest

from dbmail.send.smtp import _SMTP, socket_timeout


class _Server:
    """Accepts connections; writes each connection's pieces with a pause between them."""

    def __init__(self, pieces, close=True):
        self.pieces, self.close = pieces, close
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn):
        with conn:
            for piece in self.pieces:
                conn.sendall(piece)
                time.sleep(0.01)  # each piece its own segment: the reader meets the cuts
            if not self.close:
                self.stop.wait(5)

    def shutdown(self):
        self.stop.set()
        self.listener.close()


def _replies(cls, port, count, timeout=2.0):
    """Up to `count` replies read by a `cls` client, then the error that ended it, if any."""
    client = cls()
    client.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = []
    try:
        for _ in range(count):
            got.append(client.getreply())
    except Exception as exc:  # the comparison is of what each reader raised
        got.append((type(exc), str(exc), getattr(exc, "smtp_code", None)))
    finally:
        client.close()
    return got


def _same_as_smtplib(pieces, count=6, close=True, timeout=2.0):
    server = _Server(pieces, close=close)
    try:
        ours = _replies(_SMTP, server.port, count, timeout)
        theirs = _replies(smtplib.SMTP, server.port, count, timeout)
    finally:
        server.shutdown()
    assert ours == theirs
    return ours


def _bytes_one_by_one(data):
    return [data[i : i + 1] for i in range(len(data))]


def test_pipelined_replies_in_one_segment_are_read_one_at_a_time():
    got = _same_as_smtplib([b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n250 2.0.0 Ok: queued as 4Bx7\r\n"], 4)
    assert got == [(250, b"2.1.0 Ok"), (250, b"2.1.5 Ok"), (354, b"End data"), (250, b"2.0.0 Ok: queued as 4Bx7")]


def test_a_reply_cut_anywhere_is_put_together():
    data = b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 1000\r\n550 5.1.1 <x@example.org>: no such user\r\n"
    got = _same_as_smtplib(_bytes_one_by_one(data), 2)
    assert got == [(250, b"mx.example.org\nPIPELINING\nSIZE 1000"), (550, b"5.1.1 <x@example.org>: no such user")]


def test_a_line_cut_in_two_across_segments():
    got = _same_as_smtplib([b"250 2.0.0 Ok: que", b"ued as A\r\n45", b"1 4.3.0 try later\r\n"], 2)
    assert got == [(250, b"2.0.0 Ok: queued as A"), (451, b"4.3.0 try later")]


def test_bare_line_feeds_and_stray_blanks():
    got = _same_as_smtplib([b"250 ok \t\n", b"220-one\n220 two\r\n"], 2)
    assert got == [(250, b"ok"), (220, b"one\ntwo")]


def test_a_garbled_code_is_minus_one_and_its_continuation_is_not_read():
    got = _same_as_smtplib([b"2x0-garbled\r\n250 after\r\n"], 2)
    assert got == [(-1, b"garbled"), (250, b"after")]


def test_a_continuation_with_a_broken_code_ends_the_reply():
    got = _same_as_smtplib([b"250-first\r\nabc\r\n250 next\r\n"], 2)
    assert got == [(-1, b"first\n"), (250, b"next")]


def test_a_line_too_long_is_refused_and_the_connection_closed():
    got = _same_as_smtplib([b"250 " + b"x" * 9000 + b"\r\n"], 2)
    assert got[0][:3] == (smtplib.SMTPResponseException, "(500, 'Line too long.')", 500)


def test_a_line_exactly_at_the_limit_is_taken():
    line = b"250 " + b"y" * (smtplib._MAXLINE - 6) + b"\r\n"
    assert len(line) == smtplib._MAXLINE
    got = _same_as_smtplib([line[:3000], line[3000:]], 1)
    assert got == [(250, b"y" * (smtplib._MAXLINE - 6))]


def test_the_end_of_the_stream_in_the_middle_of_a_line():
    got = _same_as_smtplib([b"250 ok\r\n", b"421 4.4.2 bye"], 3)
    assert got[:2] == [(250, b"ok"), (421, b"4.4.2 bye")]
    assert got[2][:2] == (smtplib.SMTPServerDisconnected, "Connection unexpectedly closed")


def test_the_end_of_the_stream_in_a_multiline_reply():
    got = _same_as_smtplib([b"250-one\r\n250-two\r\n"], 2)
    assert got == [(smtplib.SMTPServerDisconnected, "Connection unexpectedly closed", None)]


def test_a_silent_server_times_out_as_a_lost_connection():
    got = _same_as_smtplib([b"250 ok\r\n"], 2, close=False, timeout=0.3)
    assert got[0] == (250, b"ok")
    assert got[1][:2] == (smtplib.SMTPServerDisconnected, "Connection unexpectedly closed: timed out")


def test_nothing_read_on_one_socket_is_taken_for_the_next_ones():
    """A reconnection (or STARTTLS, whose clear-text leftovers must not be believed) starts with nothing read."""
    first, second = _Server([b"250 a\r\n250 leftover\r\n"], close=False), _Server([b"220 fresh\r\n"])
    client = _SMTP()
    try:
        client.sock = socket.create_connection(("127.0.0.1", first.port), timeout=2)
        time.sleep(0.05)  # both lines arrive before the first is read
        assert client.getreply() == (250, b"a")
        client.sock = socket.create_connection(("127.0.0.1", second.port), timeout=2)  # as starttls swaps it
        assert client.getreply() == (220, b"fresh")
    finally:
        client.close()
        first.shutdown()
        second.shutdown()


def test_no_socket_is_a_lost_connection_not_a_crash():
    with pytest.raises(smtplib.SMTPServerDisconnected):
        _SMTP().getreply()


def test_a_plain_connection_waits_with_the_kernels_timeouts_not_pythons():
    """The backend's sockets are blocking with SO_RCVTIMEO/SO_SNDTIMEO: no poll before each recv and send."""
    server = _Server([b"220 hello\r\n"], close=False)
    client = _SMTP("127.0.0.1", server.port, timeout=0.75)
    try:
        assert client.sock.gettimeout() is None
        assert socket_timeout(client.sock) == pytest.approx(0.75, abs=0.02)  # the kernel keeps it in jiffies
    finally:
        client.close()
        server.shutdown()


def test_a_silent_server_times_out_within_the_timeout_with_the_kernels_timeouts():
    server = _Server([b"220 hello\r\n"], close=False)  # greets, then says nothing (closes after 5 s)
    client = _SMTP("127.0.0.1", server.port, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected, match="^Connection unexpectedly closed: timed out$"):
            client.ehlo()
        assert 0.4 < time.monotonic() - started < 1.5
    finally:
        client.close()
        server.shutdown()


def test_a_server_that_stops_reading_times_out_a_send():
    server = _Server([b"220 hello\r\n"], close=False)  # never reads what it is sent
    client = _SMTP("127.0.0.1", server.port, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.send(b"x" * (64 << 20))  # far more than both sides' socket buffers hold
        assert time.monotonic() - started < 3
        assert client.sock is None
    finally:
        client.close()
        server.shutdown()
