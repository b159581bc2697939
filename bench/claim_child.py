"""Claim every due email once, a batch at a time, and print how long each claim took (JSON); then give them back.

Run by bench/run.py to compare claims on an empty table with claims among
millions of finished emails. The claims continue the due-index scan where the
last one stopped, as a sender's run does; the rows are released afterwards
(as a clean stop releases them), so a send can follow.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")

import django  # noqa: E402

django.setup()

from dbmail.conf import settings as conf  # noqa: E402
from dbmail.send import claims  # noqa: E402

held, latencies, after = [], [], None
while True:
    started = time.perf_counter()
    batch = claims.claim(conf.DBMAIL_BATCH_SIZE, after=after)
    latencies.append((time.perf_counter() - started) * 1000)
    if not batch.emails:
        latencies.pop()  # the empty claim at the end says nothing about a batch
        break
    after = batch.after
    held.append(batch)
for batch in held:
    batch.release()
print(json.dumps({"claims": len(held), "emails": sum(len(b.emails) for b in held), "ms": latencies}))
