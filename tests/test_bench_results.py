"""bench/results.json: a run of some phases replaces its own figures and keeps the others'."""

import json

from bench import results


def test_a_partial_run_keeps_the_figures_it_did_not_measure_nested_ones_too(tmp_path):
    path = tmp_path / "results.json"
    results.update(path, {"send_ratio": 0.5, "history": {"claim_ms_empty": 4.9, "claim_drift": -0.01}, "gate": 1})
    results.update(path, {"send_ratio": 0.6, "history": {"claim_ms_empty": 5.1}, "spread": [1, 2]})
    assert json.loads(path.read_text()) == {
        "send_ratio": 0.6,
        "history": {"claim_ms_empty": 5.1, "claim_drift": -0.01},
        "gate": 1,
        "spread": [1, 2],
    }


def test_a_file_that_is_not_a_json_object_starts_afresh(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("[1, 2")
    results.update(path, {"a": {"b": 1}})
    assert json.loads(path.read_text()) == {"a": {"b": 1}}
