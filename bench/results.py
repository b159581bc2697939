"""bench/results.json is shared by the benchmarks: each one replaces only its own keys."""

import json
from pathlib import Path


def update(path, figures):
    """Merge `figures` into the JSON object at `path`, atomically (a failed run never leaves half a file)."""
    path = Path(path)
    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):  # no file yet, or not JSON: start afresh
        existing = {}
    if not isinstance(existing, dict):
        existing = {}
    existing.update(figures)
    partial = Path(f"{path}.tmp")
    partial.write_text(json.dumps(existing, indent=2) + "\n")
    partial.replace(path)
