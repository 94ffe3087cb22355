"""The PowerFlow paper's evaluation table from several methods' `evaluate_benchmarks` results: `build_paper_table`
(rows: methods; columns: the benchmarks in the paper's order and their average), rendered as Markdown and JSON by
`format_paper_table` / `write_paper_table`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from .markdown import fmt, md_table
from .paper_benchmarks import PAPER_BENCHMARKS

__all__ = [
    "build_paper_table",
    "format_paper_table",
    "write_paper_table",
]


def _load_result(result) -> dict:
    if isinstance(result, Mapping):
        return dict(result)
    with open(result) as f:
        return json.load(f)


def build_paper_table(results: Sequence, metric: str = "avg", scale: float = 100.0) -> dict:
    """The paper's table from per-model results (`evaluate_benchmarks` dicts or paths to their JSON files).

    Rows are methods in the given order; columns the benchmarks (the paper's order, then any others) and "Avg."
    (their mean, None when the method lacks one of them). Values are `metric`@k (k = each result's num_samples)
    times `scale` (percentages). Returns ``{"metric", "columns", "rows": [{"method", "num_samples", "values"}]}``.
    """
    loaded = [_load_result(result) for result in results]
    if not loaded:
        raise ValueError("No results to tabulate.")
    seen = [name for result in loaded for name in result["benchmarks"]]
    columns = [name for name in PAPER_BENCHMARKS if name in seen]
    columns += [name for name in dict.fromkeys(seen) if name not in columns]
    rows = []
    for result in loaded:
        k = result["num_samples"]
        values: dict[str, float | None] = {}
        for column in columns:
            entry = result["benchmarks"].get(column)
            value = entry["metrics"].get(f"{metric}@{k}") if entry else None
            values[column] = None if value is None else value * scale
        present = [values[c] for c in columns]
        values["Avg."] = sum(present) / len(present) if None not in present else None
        rows.append({"method": result.get("name") or "model", "num_samples": k, "values": values})
    ks = {row["num_samples"] for row in rows}
    label = f"{metric}@{ks.pop()}" if len(ks) == 1 else f"{metric}@k"
    return {"metric": label, "scale": scale, "columns": [*columns, "Avg."], "rows": rows}


def format_paper_table(table: Mapping) -> str:
    """Markdown: one row per method, one column per benchmark plus "Avg." (one decimal; "–" when missing)."""
    columns = table["columns"]
    rows = [[row["method"], *(fmt(row["values"][c], 1) for c in columns)] for row in table["rows"]]
    lines = md_table(["Method", *columns], rows, align="---:")
    unit = " (%)" if table.get("scale") == 100.0 else ""
    lines += ["", f"{table['metric']}{unit} per benchmark; Avg. is the mean over the benchmarks."]
    return "\n".join(lines)


def write_paper_table(table: Mapping, output_dir: str) -> tuple[str, str]:
    """Write ``paper_table.md`` and ``paper_table.json`` to `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    md_path, json_path = os.path.join(output_dir, "paper_table.md"), os.path.join(output_dir, "paper_table.json")
    with open(md_path, "w") as f:
        f.write(format_paper_table(table) + "\n")
    with open(json_path, "w") as f:
        json.dump(table, f, indent=2)
    return md_path, json_path
