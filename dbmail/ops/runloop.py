"""The run loop of long-running commands (dbmail_cron --loop, dbmail_track, mailgate_imap --loop).

A command gives it one round of work and gets: rounds every `interval`
seconds, a longer pause after each failed round in a row (so a database or
server that is down is not hammered, nor the log flooded), SIGTERM and SIGINT
ending the loop after the work in flight, and sleeps short enough that a stop
is never kept waiting. Work in a round checks `stopping` to end early.
"""

import enum
import functools
import signal
import threading
import time

from django.db import close_old_connections

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STEP = 0.2  # seconds between looks at the stop flag while sleeping
MAX_BACKOFF = 300.0  # the longest pause after failures (or the interval, if longer)


class Round(enum.Enum):
    """What a round reports; None counts as DONE."""

    DONE = "done"  # pause for the interval
    BUSY = "busy"  # more work is waiting: go again at once
    FAILED = "failed"  # pause twice as long as after the previous failure, up to MAX_BACKOFF


class RunLoop:
    def __init__(self, interval, *, max_backoff=MAX_BACKOFF, on_stop=()):
        self.interval = max(0.0, interval)
        self.max_backoff = max(self.interval, max_backoff)
        self.stopping = False
        self.failures = 0  # failed rounds in a row
        self._on_stop = list(on_stop)  # called on stop, to end work in flight early

    def handle_signals(self):
        """SIGTERM and SIGINT stop the loop instead of killing the process."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        return self

    def stop(self, *args):
        self.stopping = True
        for hook in self._on_stop:
            hook()

    def sleep(self, seconds):
        """Sleep `seconds`, or less when stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(STEP, left))

    def pause(self, outcome):
        """Seconds to wait after a round that ended with `outcome`."""
        if outcome is Round.FAILED:
            self.failures += 1
            return min(self.interval * 2 ** (self.failures - 1), self.max_backoff)
        self.failures = 0
        return 0.0 if outcome is Round.BUSY else self.interval

    def run(self, one_round):
        """Call `one_round()` until stopped; it returns a Round (or None for DONE)."""
        outcome = None
        while not self.stopping:
            if outcome is not Round.BUSY:
                # A round after a pause may find its database connection gone or stale.
                close_old_connections()
            outcome = one_round() or Round.DONE
            if not self.stopping:
                self.sleep(self.pause(outcome))


def restores_signals(handle):
    """A command's handle() that gives SIGTERM and SIGINT back as it found them.

    Run in-process (call_command from a worker or a test), the loop's handlers, which only
    set a stop flag, would otherwise outlive the command and leave its caller deaf to both.
    """

    @functools.wraps(handle)
    def wrapper(*args, **kwargs):
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        try:
            return handle(*args, **kwargs)
        finally:
            if threading.current_thread() is threading.main_thread():  # only there can handlers be set
                for sig, handler in previous.items():
                    if handler is not None and signal.getsignal(sig) is not handler:
                        signal.signal(sig, handler)

    return wrapper
