"""Call dbmail.intake.outbox.enqueue() N times, one email per call, in autocommit; print the time (JSON).

As a web view sending a password reset would: each call its own
transaction, the text already rendered. A few calls before the clock starts
warm the process up (the first query of each kind, the connection), as a web
server's worker would be.

    python bench/enqueue_child.py N FROM_ADDRESS
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

from bench.texts import RESET_SUBJECT, RESET_TEXT  # noqa: E402
from dbmail.intake.outbox import enqueue  # noqa: E402

count, sender = int(sys.argv[1]), sys.argv[2]
for i in range(20):
    enqueue(f"warm{i}@example.net", RESET_SUBJECT, RESET_TEXT.format(n=i), from_email=sender)
started = time.perf_counter()
for i in range(count):
    enqueue(f"reader{i}@example.net", RESET_SUBJECT, RESET_TEXT.format(n=i), from_email=sender)
seconds = time.perf_counter() - started
print(json.dumps({"calls": count, "seconds": seconds}))
