"""Expand every due request, as dbmail_cron would, and print how long the expansion took (JSON).

Run by bench/run.py as its own process, so that its memory is Django's and
the expansion's alone. Django's start-up (settings, apps, the URL patterns)
is left out of the timing: it is the same for 10 and 100,000 recipients and
says nothing about the expansion.

The peak RSS is this process's own high-water mark (VmHWM), or its writing
process's (dbmail.intake.writer_process) when that is higher. This
process's own rusage figure (ru_maxrss) is not used: Linux carries it over
from the parent across fork and exec, so a child of a large bench process
would report the parent's peak; its writer's comes from a fork of this one.
"""

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")

import django  # noqa: E402

django.setup()

from django.urls import get_resolver  # noqa: E402

from dbmail.intake import expand  # noqa: E402

# Also start-up: the first reverse() builds every URL pattern of the site (~0.13 s here, mostly
# importing the REST API's libraries), once per process whatever the number of recipients.
_ = get_resolver().url_patterns


def children_cpu():
    # The expansion's writing process (dbmail.intake.writer_process), once reaped.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


started, cpu, forked = time.perf_counter(), time.process_time(), children_cpu()
result = expand.expand_due()
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu + children_cpu() - forked


def peak_rss_kb():
    """The larger of this process's peak and its writing process's (each counts the pages they share)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
                break
        else:
            raise RuntimeError("no VmHWM in /proc/self/status")
    # The writer was forked from this process after start-up, so its figure is its own, not a parent's.
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


print(
    json.dumps(
        {
            "requests": result.requests,
            "emails": result.emails,
            "seconds": seconds,
            "cpu_seconds": cpu,  # this process's, all its threads, and its writing process's
            "peak_rss_kb": peak_rss_kb(),
        }
    )
)
