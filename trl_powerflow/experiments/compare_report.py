"""The report of the same-harness comparison (`compare.py`): its Markdown tables (final models; quality and length
by step) and plots (quality and length against the step, quality against diversity)."""

from __future__ import annotations

import os

from ..evaluation.markdown import fmt_metric, md_table


def default_quality_metric(metrics: dict, k: int) -> str:
    return f"avg@{k}" if metrics.get(f"avg@{k}") is not None else "quality"


def default_diversity_metric(metrics: dict) -> str:
    return "semantic_diversity" if metrics.get("semantic_diversity") is not None else "distinct_2"


def table_columns(results: dict, k: int) -> list[tuple[str, str]]:
    columns = [
        (f"avg@{k}", f"avg@{k}"),
        (f"pass@{k}", f"pass@{k}"),
        (f"maj@{k}", f"maj@{k}"),
        ("mean_completion_tokens", "tokens"),
        ("truncated_fraction", "truncated"),
        ("distinct_2", "distinct-2"),
        ("distinct_answer_fraction", "distinct answers"),
        ("semantic_diversity", "semantic div."),
    ]
    finals = [r["evals"][-1]["metrics"] for r in results.values() if r.get("evals")]
    extra = []  # the --task_metrics keys, in their order
    for result in results.values():
        for key in result["evals"][-1].get("task_metric_keys", []) if result.get("evals") else []:
            if key not in extra:
                extra.append(key)
    columns = [(key, label) for key, label in columns if any(m.get(key) is not None for m in finals)]
    if all(not m.get("answer_fraction") for m in finals):  # no \boxed{} answers at all (e.g. a creative task)
        columns = [(key, label) for key, label in columns if key != "distinct_answer_fraction"]
    return columns + [(key, key.replace("_", " ")) for key in extra]


def markdown(results: dict, info: dict) -> str:
    k = info["eval_settings"]["num_samples"]
    quality = info["quality_metric"]
    columns = table_columns(results, k)
    lines = [f"# {info['title']}", ""]
    lines.append(
        f"Same starting model, prompts, recipe, seed ({info['seed']}) and budget ({info['max_steps']} steps) for "
        f"every method; evaluation: {info['eval_settings']['num_prompts']} prompts x {k} samples at temperature "
        f"{info['eval_settings']['temperature']:g}, max {info['eval_settings']['max_new_tokens']} new tokens."
    )
    lines += ["", "## Final models", ""]
    header = ["method", "trainer / reward", "labels", "step"] + [label for _, label in columns] + ["train s"]
    rows = []
    for name, result in results.items():
        if not result.get("evals"):
            error = result.get("error", "?").splitlines()[0].replace("|", "/")[:100]
            rows.append([name, result["description"], "", f"failed: {error}"])
            continue
        final = result["evals"][-1]
        cells = [name, result["description"], "yes" if result["uses_labels"] else "no", str(final["step"])]
        cells += [fmt_metric(final["metrics"].get(key)) for key, _ in columns]
        rows.append(cells + [fmt_metric(result.get("train_seconds"))])
    lines += md_table(header, rows)
    steps = sorted({e["step"] for r in results.values() for e in r.get("evals", [])})
    if len(steps) > 1:
        length = "mean_completion_tokens"
        lines += ["", f"## {quality} (and mean completion tokens) by step", ""]
        rows = []
        for name, result in results.items():
            by_step = {e["step"]: e["metrics"] for e in result.get("evals", [])}
            cells = []
            for s in steps:
                m = by_step.get(s)
                cells.append("" if m is None else f"{fmt_metric(m.get(quality))} ({fmt_metric(m.get(length))})")
            rows.append([name, *cells])
        lines += md_table(["method"] + [f"step {s}" for s in steps], rows)
    lines += ["", "Command:", "", "```bash", info["command"], "```", ""]
    return "\n".join(lines)


def plot(results: dict, info: dict, output_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality, diversity = info["quality_metric"], info["diversity_metric"]
    names = [n for n, r in results.items() if r.get("evals")]
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    paths = []

    def series(name, key):
        points = [(e["step"], e["metrics"].get(key)) for e in results[name]["evals"]]
        return [p for p in points if p[1] is not None]

    def styled(name):
        return {"color": colors[name], "linestyle": "--" if results[name]["trainer"] is None else "-"}

    def draw_vs_step(ax, key):
        for name in names:
            points = series(name, key)
            if not points:
                continue
            if results[name]["trainer"] is None:  # not trained: a horizontal reference line
                ax.axhline(points[-1][1], label=name, **styled(name))
            else:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name, **styled(name))
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    draw_vs_step(ax, quality)
    ax.set_ylabel(quality)
    ax.set_title(f"{info['title']}: {quality} vs step", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    paths.append(os.path.join(output_dir, "accuracy_vs_step.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.5))
    draw_vs_step(axes[0], "mean_completion_tokens")
    axes[0].set_ylabel("mean completion tokens (evaluation)")
    axes[0].set_title("evaluation samples")
    for name in names:
        log = [h for h in results[name].get("train_log", []) if "completions/mean_length" in h]
        if log:
            xs = [h["step"] for h in log]
            ys = smooth([h["completions/mean_length"] for h in log])
            axes[1].plot(xs, ys, label=name, **styled(name))
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("mean completion tokens (training batches, smoothed)")
    axes[1].set_title("training samples")
    axes[1].grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle(f"{info['title']}: completion length vs step", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    paths.append(os.path.join(output_dir, "length_vs_step.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name in names:
        final = results[name]["evals"][-1]["metrics"]
        x, y = final.get(diversity), final.get(quality)
        if x is None or y is None:
            continue
        path = [(e["metrics"].get(diversity), e["metrics"].get(quality)) for e in results[name]["evals"]]
        path = [p for p in path if p[0] is not None and p[1] is not None]
        if results[name]["trainer"] is not None and len(path) > 1:  # the path from the start through checkpoints
            ax.plot([p[0] for p in path], [p[1] for p in path], color=colors[name], alpha=0.35, lw=1, marker=".")
        ax.scatter([x], [y], color=colors[name], s=50, marker="s" if results[name]["trainer"] is None else "o")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(diversity)
    ax.set_ylabel(quality)
    ax.set_title(
        f"{info['title']}:\nquality vs diversity (final models; thin lines: path from the start)", fontsize=10
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(os.path.join(output_dir, "quality_vs_diversity.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def smooth(values: list[float], window: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out
