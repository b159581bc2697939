"""A local SMTP server that keeps every message it gets as a .eml file (for the demo run).

Nothing leaves the machine: `make run` points the site at this server, so a
newcomer can read what would have been sent in var/mail/.
"""

import itertools
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class SaveToDirectory:
    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._serial = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for rcpt in envelope.rcpt_tos:
            name = f"{stamp}-{next(self._serial):05d}-{rcpt.replace('/', '_')}.eml"
            header = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {rcpt}\r\n".encode()
            (self.directory / name).write_bytes(header + envelope.original_content)
        return "250 2.0.0 captured"


def serve(directory, host="127.0.0.1", port=1025):
    """Start the capture server in a background thread; returns the running controller."""
    controller = Controller(SaveToDirectory(directory), hostname=host, port=port)
    controller.start()
    return controller
