"""bench/results.json is shared by the benchmarks: each one replaces only its own keys.

Nested objects merge too: a run of some phases (the send phase's empty-table claims in
`history`) leaves the figures other phases wrote under the same key (the history's own).
"""

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
    _merge(existing, figures)
    partial = Path(f"{path}.tmp")
    partial.write_text(json.dumps(existing, indent=2) + "\n")
    partial.replace(path)


def _merge(into, figures):
    for key, value in figures.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
