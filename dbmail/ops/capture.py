"""A local SMTP server that keeps every message it gets as a .eml file (for the demo run).

Nothing leaves the machine: `make run` points the site at this server, so a
newcomer can read what would have been sent in var/mail/.

Creating a file costs about a millisecond on some disks, which made this sink
the slowest part of the demo (under 400 messages a second where the sender
does several times that against a sink that only answers). So the SMTP side
answers as soon as it holds the message and one writer thread saves the
files behind it; stopping the server waits for the writer. A demo sink may
afford that: a real MTA must not answer 250 before the message is safe.
"""

import itertools
import queue
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class SaveToDirectory:
    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._serial = itertools.count(1)
        self._files = queue.Queue()
        self._writer = threading.Thread(target=self._write, name="capture-writer", daemon=True)
        self._writer.start()

    async def handle_DATA(self, server, session, envelope):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for rcpt in envelope.rcpt_tos:
            name = f"{stamp}-{next(self._serial):05d}-{rcpt.replace('/', '_')}.eml"
            header = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {rcpt}\r\n".encode()
            self._files.put((name, header + envelope.original_content))
        return "250 2.0.0 captured"

    def _write(self):
        while (item := self._files.get()) is not None:
            name, data = item
            (self.directory / name).write_bytes(data)
            self._files.task_done()
        self._files.task_done()

    def flush(self):
        """Wait until every message answered so far is on disk."""
        self._files.join()

    def close(self):
        self._files.put(None)
        self._writer.join()


class CaptureServer(Controller):
    """The aiosmtpd controller; stop() also saves what the writer still holds."""

    def stop(self, *args, **kwargs):
        try:
            super().stop(*args, **kwargs)
        finally:
            self.handler.close()


def serve(directory, host="127.0.0.1", port=1025):
    """Start the capture server in a background thread; returns the running controller."""
    controller = CaptureServer(SaveToDirectory(directory), hostname=host, port=port)
    controller.start()
    return controller
