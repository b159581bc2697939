"""The dbmail_track job: read the tracking queue in batches, apply each in one transaction, then acknowledge.

A crash before an acknowledgement redelivers the batch; the applied keys
(dbmail.track.apply) make that harmless.
"""

import time
from dataclasses import dataclass, field

from dbmail.conf import settings as conf
from dbmail.track import apply
from dbmail.track.queue import get_queue


@dataclass
class ConsumeResult:
    """What one consume() did: batches applied, time taken, and the events' counts."""

    batches: int = 0
    seconds: float = 0.0
    totals: apply.ApplyResult = field(default_factory=apply.ApplyResult)

    def summary(self):
        return f"{self.totals.summary()} in {self.batches} batch{'es' * (self.batches != 1)}, {self.seconds:.1f}s"


def consume(queue=None, batch_size=None, max_batches=None, should_stop=lambda: False):
    """Drain the tracking queue, batch by batch, until it is empty (or stopped, or max_batches)."""
    queue = queue or get_queue()
    batch_size = batch_size or conf.TRACKING_BATCH_SIZE
    run, clock = ConsumeResult(), time.monotonic()
    while not should_stop() and (max_batches is None or run.batches < max_batches):
        deliveries = queue.fetch(batch_size)
        if not deliveries:
            break
        try:
            result = apply.apply_batch([d.payload for d in deliveries])
        except Exception:
            queue.release(deliveries)
            raise
        queue.ack(deliveries)
        run.batches += 1
        run.totals += result
    run.seconds = time.monotonic() - clock
    return run
