"""The plots of the small-scale experiment's report (`evidence_report.write_report`)."""

from __future__ import annotations

import math
import os

from . import toy_objectives
from .evidence_summary import METHOD_LABELS


def plot_all(report: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = report["seeds"]
    colors = {"base": "grey", "grpo_accuracy": "tab:blue", "ttrl": "tab:orange", "empo": "tab:red",
              "intuitor": "tab:purple", "powerflow": "tab:green",
              "powerflow_la_tb_exact": "yellowgreen", "powerflow_token_balance": "tab:olive"}  # fmt: skip

    # 1. multi-seed reasoning comparison: avg@8 at N and 2N, mean with 95% interval, per-seed dots
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "avg@8", "avg@8 (accuracy)"), (axes[1], "maj@8", "maj@8")):
        for i, step in enumerate(seeds["budgets"]):
            for j, (method, rows) in enumerate(seeds["methods"].items()):
                stats = rows[str(step)]["stats"][key]
                if stats["mean"] is None:
                    continue
                x = i * (len(seeds["methods"]) + 1) + j
                err = None
                if stats["low"] is not None:
                    err = [[stats["mean"] - stats["low"]], [stats["high"] - stats["mean"]]]
                ax.bar(x, stats["mean"], color=colors.get(method), yerr=err, capsize=4,
                       label=METHOD_LABELS.get(method, method) if i == 0 else None)  # fmt: skip
                ax.scatter([x] * len(stats["values"]), stats["values"], color="black", s=10, zorder=3)
        ax.set_xticks([(i * (len(seeds["methods"]) + 1) + (len(seeds["methods"]) - 1) / 2) for i in range(2)])
        ax.set_xticklabels([f"{s} steps" for s in seeds["budgets"]])
        ax.set_ylabel(label)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"Digit chains, {len(seeds['seeds'])} seeds: mean, 95% t-interval, dots = seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(os.path.join(out, "reasoning_seeds.png"), dpi=110)
    plt.close(fig)

    # 2. alpha sweep
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    sweep = [p for p in report["sweep"] if "label" not in p]
    ttrl = next((p for p in report["sweep"] if p.get("label") == "ttrl"), None)
    base = next((p for p in report["sweep"] if p.get("label") == "base"), None)
    keys = (("avg@8", "avg@8"), ("pass@8", "pass@8"), ("distinct_answer_fraction", "distinct answers / 8"),
            ("mean_completion_tokens", "mean tokens"))  # fmt: skip
    if base and all(p["alpha"] != 1 for p in sweep):  # alpha 1: the LA-TB target is the base itself (lambda = 0)
        sweep = sorted([*sweep, {"alpha": 1.0, "metrics": base["metrics"]}], key=lambda p: p["alpha"])
    xs = [math.log2(p["alpha"]) for p in sweep]
    x_inf = (max(xs) if xs else 3) + 1.5
    for ax, (key, label) in zip(axes, keys):
        ax.plot(xs, [p["metrics"].get(key) for p in sweep], marker="o", color="tab:green", label="PowerFlow")
        if ttrl:
            ax.scatter([x_inf], [ttrl["metrics"].get(key)], color="tab:orange", marker="D", label="TTRL (alpha=inf)")
        if base:
            ax.axhline(base["metrics"].get(key), color="grey", ls="--", label="base")
        ax.set_xticks([*xs, x_inf])
        ax.set_xticklabels([f"{p['alpha']:g}" for p in sweep] + ["inf\n(TTRL)"])
        ax.set_xlabel("alpha (log scale)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Digit chains: PowerFlow against alpha after {report['seeds']['budgets'][0]} steps "
                 "(one seed)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(os.path.join(out, "alpha_sweep.png"), dpi=110)
    plt.close(fig)

    # 3. creative frontier
    fig, ax = plt.subplots(figsize=(6.5, 5))
    creative = report["creative"]
    if creative:
        points = dict(creative["alphas"])
        start = creative["others"].get("base")
        if start and all(float(a) != 1 for a in points):  # alpha 1: the target is the starting model itself
            points[1.0] = start["metrics"]
        alphas = sorted(points, key=float)
        pts = [(points[a].get("distinct_poems"), points[a].get("quality")) for a in alphas]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="tab:green", label="PowerFlow")
        for a, p in zip(alphas, pts):
            ax.annotate(f"alpha {float(a):g}", p, textcoords="offset points", xytext=(4, 4), fontsize=7)
        for name, other in creative["others"].items():
            m = other["metrics"]
            marker = "s" if other["trainer"] is None else "^"
            ax.scatter([m.get("distinct_poems")], [m.get("quality")], marker=marker, s=45)
            ax.annotate(name, (m.get("distinct_poems"), m.get("quality")), textcoords="offset points",
                        xytext=(4, -9), fontsize=7)  # fmt: skip
    ax.set_xlabel("distinct poems (diversity)")
    ax.set_ylabel("quality (valid poems)")
    ax.set_title("Rhyming couplets: quality/diversity frontier\n(squares: not trained, triangles: baselines)",
                 fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "creative_frontier.png"), dpi=110)
    plt.close(fig)

    # 4. live distance along the reasoning runs
    from .compare_report import smooth

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, history in report["live"].items():
        for ax, key in zip(axes, ("powerflow/target_kl", "powerflow/target_lambda")):
            points = [(h["step"], h[key]) for h in history if h.get(key) is not None]
            if points:
                ax.plot([p[0] for p in points], smooth([p[1] for p in points], 5), label=name,
                        ls="-" if name.startswith("alpha 4") else "--")  # fmt: skip
    axes[0].set_ylabel("powerflow/target_kl (estimate, smoothed over 5 steps)")
    axes[1].set_ylabel("powerflow/target_lambda (estimate, smoothed)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("symlog", linthresh=0.1)
    axes[1].legend(fontsize=7)
    fig.suptitle("Digit chains: live distance of PowerFlow to its LA-TB target (from each step's own batch)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(os.path.join(out, "target_kl_live.png"), dpi=110)
    plt.close(fig)

    # 5. toy: estimate vs exact
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, run in enumerate(report["toy"].get("runs", [])):
        color = f"C{i}"
        steps = [s["step"] for s in run["steps"]]
        axes[0].plot(steps, [s["exact_kl"] for s in run["steps"]], color=color, lw=2, label=f"exact, G={run['group']}")
        axes[0].plot(steps, [s["estimated_kl"] for s in run["steps"]], color=color, ls=":", marker=".",
                     label=f"logged estimate, G={run['group']}")  # fmt: skip
        axes[1].plot(steps, [s["estimated_lambda"] for s in run["steps"]], color=color, ls=":", marker=".",
                     label=f"logged estimate, G={run['group']}")  # fmt: skip
        axes[1].axhline(run["exact_lambda"], color="black", lw=1.5, label="exact lambda" if i == 0 else None)
    axes[0].set_ylabel("KL(pi_theta || pi*)")
    axes[1].set_ylabel("lambda")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Enumerable toy (alpha 2): logged target distance against the exact value", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "toy_target_distance.png"), dpi=110)
    plt.close(fig)
    if report["toy"].get("objectives"):
        toy_objectives.plot(report["toy"]["objectives"], out)
