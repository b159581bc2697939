"""The benchmark's figures: the median of the repetitions, with their spread."""

import pytest

from bench import stats


def test_the_median_and_spread_of_repetitions():
    figure = stats.summary([3.0, 1.0, 2.0, 10.0])
    assert figure == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert stats.shown(figure, " msg/s", ",.1f") == "2.5 msg/s (1.0-10.0, n=4)"
    assert stats.shown(stats.summary([1234.4]), " msg/s") == "1,234 msg/s (n=1)"


def test_a_figure_needs_a_repetition():
    with pytest.raises(ValueError):
        stats.summary([])
