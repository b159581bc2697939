"""One message from stdin through the gate, as mailgate/pipe.py runs it, timed; one JSON line on stdout.

Run by bench/gate_worst.py. `seconds` is gate.main() alone (reading stdin,
storing, parsing, routing, deciding, forwarding); `startup_seconds` is
Django's set-up before it. The peak RSS is this process's own high-water mark
(VmHWM; see bench/expand_child.py for why not ru_maxrss).
"""

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

started = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
import django  # noqa: E402

django.setup()
from mailgate.gate import receive as gate  # noqa: E402
from mailgate.models import InboundMessage  # noqa: E402


def peak_rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


parser = argparse.ArgumentParser()
parser.add_argument("--recipient", required=True)
parser.add_argument("--sender", default="")
args = parser.parse_args()
ready = time.perf_counter()
out, err = io.StringIO(), io.StringIO()
code = gate.main(sys.stdin.buffer, out, err, os.environ, args.recipient, args.sender)
seconds = time.perf_counter() - ready
sys.stderr.write(err.getvalue())
inbound = InboundMessage.objects.order_by("-id").first()
print(
    json.dumps(
        {
            "code": code,
            "status": inbound.status if inbound else "",
            "note": " ".join((inbound.note if inbound else err.getvalue()).split())[:200],
            "seconds": seconds,
            "startup_seconds": ready - started,
            "peak_rss_kb": peak_rss_kb(),
        }
    )
)
