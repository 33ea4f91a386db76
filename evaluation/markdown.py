"""Markdown and number formatting shared by a run's report and the comparison of runs."""

# How an undefined value (a metric the test subset cannot define, a missing setting) reads.
MISSING = "–"


def markdown_table(header, rows, align):
    """A GitHub markdown table; `align` has one letter per column, "l" (left) or "r" (right)."""
    rule = {"l": ":---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule[side] for side in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_value(value):
    """Scores with 3 decimals, counts with thousands separators, undefined values as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}"


def format_interval(interval):
    return MISSING if interval is None else f"[{interval['low']:.3f}, {interval['high']:.3f}]"


def format_duration(seconds):
    if seconds is None:
        return None
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
