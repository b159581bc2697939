"""Run one dbmail_cron in this process and print its peak RSS and wall time as JSON (bench/run.py --memory).

Like bench/expand_child.py, the process measures itself: VmHWM from
/proc/self/status (its own high-water mark; ru_maxrss would carry the
parent's over), and VmRSS right after Django's start-up, so the growth the
run itself caused can be told from Django's own size.
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

from django.core.management import call_command  # noqa: E402
from django.urls import get_resolver  # noqa: E402

_ = get_resolver().url_patterns  # start-up, as in a real run's first reverse()


def status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


baseline = status_kb("VmRSS")
started = time.perf_counter()
call_command("dbmail_cron", *sys.argv[1:])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "baseline_rss_kb": baseline, "peak_rss_kb": status_kb("VmHWM")}))
