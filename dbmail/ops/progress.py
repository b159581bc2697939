"""What dbmail_cron shows on a terminal: one line, redrawn in place, with total, rate and ETA.

    expanded 2,000 emails
    sent 363/5,000 (92/s, ETA 50s), deferred 2

Under cron (no terminal) nothing of this is drawn: cron mails whatever a job prints.
"""

import time

from dbmail import states

REDRAW_SECONDS = 0.2  # at most five redraws a second: a terminal is slower than the sender


def number(n):
    return f"{n:,}"


def duration(seconds):
    """`50s`, `3m 20s`, `2h 05m`: short, for an ETA."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class Progress:
    """Counts a run's expansion and send outcomes and draws them on `stream` (a terminal)."""

    def __init__(self, stream, clock=time.monotonic):
        self.stream = stream
        self.clock = clock
        self.drawn_at = None
        self.width = 0
        self.start_round()

    def start_round(self):
        self.expanded_count = 0
        self.counts = dict.fromkeys(states.OUTCOMES, 0)  # sent, deferred, dropped
        self.total = None
        self.sending_since = None

    def expanded(self, n):
        self.expanded_count += n
        self.draw()

    def sending(self, total):
        """Sending starts: `total` emails are due (the most this run will attempt)."""
        self.total = total
        self.sending_since = self.clock()
        if total:  # an idle round of --loop draws nothing
            self.draw(force=True)

    def outcome(self, email, outcome):
        self.counts[outcome.status] += 1
        self.draw()

    def counted(self, counts):
        """The outcomes so far, counted elsewhere (the children of a run sending with several processes)."""
        self.counts.update(counts)
        self.draw()

    @property
    def attempted(self):
        return sum(self.counts.values())

    def line(self):
        if self.sending_since is None:
            return f"expanded {number(self.expanded_count)} emails"
        done = self.attempted
        total = max(self.total or 0, done)
        text = f"{states.EmailStatus.SENT} {number(self.counts[states.EmailStatus.SENT])}/{number(total)}"
        elapsed = self.clock() - self.sending_since
        if done and elapsed > 0:
            rate = done / elapsed
            eta = (total - done) / rate if rate else 0
            shown = f"{rate:.0f}/s" if rate >= 10 else f"{rate:.1f}/s"
            text += f" ({shown}, ETA {duration(eta)})"
        for status in (states.EmailStatus.DEFERRED, states.EmailStatus.DROPPED):
            if self.counts[status]:
                text += f", {status} {number(self.counts[status])}"
        return text

    def draw(self, force=False):
        now = self.clock()
        if not force and self.drawn_at is not None and now - self.drawn_at < REDRAW_SECONDS:
            return
        self.drawn_at = now
        text = self.line()
        # Pad over a longer previous line instead of an escape code: any terminal understands spaces.
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def clear(self):
        if self.drawn_at is not None:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.drawn_at = None
            self.width = 0
