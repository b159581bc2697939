"""bench/dkim_cost.py runs in one command, verifies what it signs, and adds its `dkim` key to results.json."""

import json
import os
import subprocess
import sys

from .conftest import ROOT


def test_a_small_run_prints_the_table_and_keeps_the_other_figures(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"send_msgs_s": 1954.1}))
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dkim_cost.py"), "--messages", "20", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "rsa-sha256 2048, as dbmail signs" in done.stdout and "ed25519-sha256" in done.stdout
    figures = json.loads(results.read_text())
    assert figures["send_msgs_s"] == 1954.1
    dkim = figures["dkim"]
    assert dkim["message_bytes"] > 1500
    assert 0 < dkim["rsa2048_us"] < dkim["rsa2048_dkimpy_us"] and dkim["ed25519_us"] > 0
