"""The one Markdown-table writer of the package's reports (evaluation, comparisons, the experiment, the demo) and
its number formats."""

from __future__ import annotations


def fmt(value, digits: int = 3) -> str:
    """`value` with `digits` decimals; '–' for None."""
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def fmt_metric(value) -> str:
    """A metric cell: '–' for None, 3 decimals below 100 and 1 from 100 on, anything else as `str`."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def md_table(header, rows, align: str = "---") -> list[str]:
    """The lines of a Markdown table: the header, its rule (`align` per column after the first, e.g. "---:"), one
    line per row."""
    rule = ["---"] + [align] * (len(header) - 1)
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "|".join(rule) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
