"""A lean SMTP sink for the benchmark: accepts everything, remembers each Message-ID.

Stock aiosmtpd spends about half a millisecond of CPU per message, which on a
two-core machine would make the sink, not the sender, the thing measured. This
one parses only what a sender needs answered (EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP, QUIT) and looks only at the header block of each message for its
Message-ID.

    python bench/sink.py --report out.json        # prints the port it listens on, then serves
    kill -TERM <pid>                              # writes out.json and exits

The report: messages accepted, connections, unique Message-IDs, duplicates
(receptions beyond the first of an ID), messages without an ID, duplicate
recipients (deliveries beyond the first to one envelope recipient: the
benchmark's messages go to one address each, and a sender that builds a
message twice may give each copy a fresh Message-ID), the sink's own CPU
seconds, and the list of IDs received.
"""

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import sys
import time

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)

_EHLO = b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"


class Sink:
    """What all connections received, counted per Message-ID."""

    def __init__(self):
        self.counts = {}
        self.messages = 0
        self.connections = 0
        self.without_id = 0
        self.recipients = {}
        self.first_at = self.last_at = None  # time.time() of the first and the last message

    def record(self, message, rcpts=()):
        self.messages += 1
        self.last_at = time.time()
        if self.first_at is None:
            self.first_at = self.last_at
        for rcpt in rcpts:
            self.recipients[rcpt] = self.recipients.get(rcpt, 0) + 1
        end = message.find(b"\r\n\r\n")
        match = _MESSAGE_ID.search(message, 0, end if end >= 0 else len(message))
        if match is None:
            self.without_id += 1
            return
        key = b"".join(match.group(1).split()).decode("ascii", "replace")
        self.counts[key] = self.counts.get(key, 0) + 1

    def report(self):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "messages": self.messages,
            "connections": self.connections,
            "unique": len(self.counts),
            "duplicates": sum(n - 1 for n in self.counts.values()),
            "without_message_id": self.without_id,
            "duplicate_recipients": sum(n - 1 for n in self.recipients.values()),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "message_ids": list(self.counts),
        }


class SMTPSession(asyncio.Protocol):
    def __init__(self, sink):
        self.sink = sink
        self.buffer = bytearray()
        self.in_data = False
        self.scanned = 0  # how far into the buffer the end of DATA has been looked for
        self.mail_from = False
        self.rcpts = []

    def connection_made(self, transport):
        self.transport = transport
        self.sink.connections += 1
        transport.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, data):
        self.buffer += data
        replies = []
        while self.buffer:
            if self.in_data:
                if not self._end_of_data(replies):
                    break
            else:
                end = self.buffer.find(b"\n")
                if end < 0:
                    break
                line = bytes(self.buffer[:end]).rstrip(b"\r")
                del self.buffer[: end + 1]
                reply = self._command(line)
                replies.append(reply)
                if reply.startswith(b"221"):
                    self.transport.write(b"".join(replies))
                    self.transport.close()
                    return
        if replies:
            self.transport.write(b"".join(replies))

    def _end_of_data(self, replies):
        buf = self.buffer
        if buf.startswith(b".\r\n"):
            body_end, consumed = 0, 3
        else:
            found = buf.find(b"\r\n.\r\n", max(0, self.scanned - 4))
            if found < 0:
                self.scanned = len(buf)
                return False
            body_end, consumed = found + 2, found + 5
        self.sink.record(bytes(buf[:body_end]), self.rcpts)
        del buf[:consumed]
        self.in_data, self.scanned, self.mail_from, self.rcpts = False, 0, False, []
        replies.append(b"250 2.0.0 Ok: queued as %d\r\n" % self.sink.messages)
        return True

    def _command(self, line):
        verb = line[:4].upper()
        if verb == b"EHLO":
            return _EHLO
        if verb == b"HELO":
            return b"250 bench-sink\r\n"
        if verb == b"MAIL":
            self.mail_from, self.rcpts = True, []
            return b"250 2.1.0 Ok\r\n"
        if verb == b"RCPT":
            if not self.mail_from:
                return b"503 5.5.1 Error: need MAIL command\r\n"
            self.rcpts.append(bytes(line[8:]).strip().lower())
            return b"250 2.1.5 Ok\r\n"
        if verb == b"DATA":
            if not self.rcpts:
                return b"503 5.5.1 Error: need RCPT command\r\n"
            self.in_data = True
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self.mail_from, self.rcpts = False, []
            return b"250 2.0.0 Ok\r\n"
        if verb == b"NOOP":
            return b"250 2.0.0 Ok\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        return b"502 5.5.2 Error: command not recognized\r\n"


async def serve(host, port, report_path):
    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTPSession(sink), host, port)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    print(server.sockets[0].getsockname()[1], flush=True)
    await stopped.wait()
    server.close()
    _write_json(report_path, sink.report())


def _write_json(path, data):
    if path in (None, "-"):
        json.dump(data, sys.stdout)
        sys.stdout.flush()
        return
    partial = f"{path}.partial"
    with open(partial, "w") as fh:
        json.dump(data, fh)
    os.replace(partial, path)  # a reader never sees half a report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--report", default="-", help="where to write the JSON report on SIGTERM (- = stdout)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.report))


if __name__ == "__main__":
    main()
