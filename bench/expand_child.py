"""Expand every due request, as dbmail_cron would, and print how long the expansion took (JSON).

Run by bench/run.py as its own process so that the parent can read this
process's peak RSS (os.wait4) without its own memory mixed in. Django's
start-up is left out of the timing: it is the same for 10 and 100,000
recipients and says nothing about the expansion.
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

from dbmail import expand  # noqa: E402

started = time.perf_counter()
result = expand.expand_due()
seconds = time.perf_counter() - started
print(json.dumps({"requests": result.requests, "emails": result.emails, "seconds": seconds}))
