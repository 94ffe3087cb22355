"""Markdown tables of the experiment reports: number formatting and the table writer."""


def fmt(value, digits: int = 3) -> str:
    """`value` with `digits` decimals; '–' for None."""
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def md_table(header, rows) -> list[str]:
    """The lines of a Markdown table: the header, its rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
