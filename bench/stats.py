"""Repetitions of one figure: its median and spread, and how the table prints them."""

import statistics


def summary(values, digits=1):
    """{"median", "min", "max", "n"} of the repetitions (the median is the figure)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("a figure needs at least one repetition")
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def shown(figure, unit="", fmt=",.0f"):
    """'1,234 msg/s (1,100-1,300, n=3)': the median, then the spread of the repetitions."""
    median = format(figure["median"], fmt)
    if figure["n"] == 1:
        return f"{median}{unit} (n=1)"
    return f"{median}{unit} ({format(figure['min'], fmt)}-{format(figure['max'], fmt)}, n={figure['n']})"
