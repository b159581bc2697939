"""The benchmark names the machine it ran on, so that runs on different machines are not compared blindly."""

import sys

import pytest

from bench import run


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo is Linux's")
def test_the_processor_is_named_as_the_kernel_names_it():
    with open("/proc/cpuinfo") as cpuinfo:
        names = [line.partition(":")[2].strip() for line in cpuinfo if line.startswith("model name")]
    found = run.machine()
    assert set(found) == {"cpu", "cache"}
    if names:  # some virtual processors have no model name: then "unknown", never a crash
        assert found["cpu"] == names[0]
