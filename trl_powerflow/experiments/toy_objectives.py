"""What the length tilt does, exactly: every objective trained on the enumerable toy, its exact KL to its own fixed
point and to the pure alpha-power per step (the `toy` stage's second part; runs in `toys/objective_curves.py`)."""

import os
import statistics

from ..evaluation.markdown import fmt, md_table

OBJECTIVES = ("la_tb", "la_tb_exact", "token_balance", "tb_traj")
FIXED_POINTS = {
    "la_tb": "p^a exp(-lambda len(y))", "la_tb_exact": "p^a / Z", "token_balance": "p^a / Z", "tb_traj": "p^a / Z",
}  # fmt: skip
HEADER = [
    "objective", "fixed point", "KL to own fixed point: start", "at 10% of steps", "at a third", "at the end",
    "KL to p^a / Z at the end", "steps to a tenth of the start",
]  # fmt: skip


def toy_objective_runs(model_dir: str, output_dir: str, quick: bool) -> dict:
    """Train each objective on the toy (alpha 2, G 16, learning rate 5e-3 constant, the head at its default rate),
    3 seeds x 300 steps (quick: 1 seed x 4 steps)."""
    from ..toys.objective_curves import train_objective_on_toy

    settings = {"alpha": 2.0, "steps": 4 if quick else 300, "seeds": [0] if quick else [0, 1, 2],
                "eval_every": 1 if quick else 5, "learning_rate": 5e-3, "group": 16}  # fmt: skip
    keys = ("alpha", "steps", "learning_rate", "group", "eval_every")
    kwargs = {key: settings[key] for key in keys}
    runs = [
        train_objective_on_toy(model_dir, output_dir, objective, seed=seed, **kwargs)
        for seed in settings["seeds"]
        for objective in OBJECTIVES
    ]
    return {"settings": settings, "runs": runs}


def _kl_at(curve: list[dict], step: int, key: str = "kl") -> float:
    """The KL recorded at the last evaluation at or before `step`."""
    return [c for c in curve if c["step"] <= step][-1][key]


def _median(values):
    return statistics.median(values) if values else float("nan")


def table_rows(record: dict) -> list[list]:
    """One row per objective: medians over seeds."""
    steps = record["settings"]["steps"]
    rows = []
    for objective in OBJECTIVES:
        curves = [r["curve"] for r in record["runs"] if r["objective"] == objective]
        if not curves:
            continue
        at = [_median([_kl_at(c, s) for c in curves]) for s in (0, steps // 10, steps // 3, steps)]
        to_power = _median([_kl_at(c, steps, "kl_to_power") for c in curves])
        reached = [next((p["step"] for p in c if p["kl"] <= 0.1 * c[0]["kl"]), None) for c in curves]
        hits = sorted(s for s in reached if s is not None)
        tenth = f"{_median(hits):g} ({len(hits)}/{len(curves)})" if hits else f"– (0/{len(curves)})"
        rows.append([objective, FIXED_POINTS[objective], *(fmt(v, 4) for v in at), fmt(to_power, 4), tenth])
    return rows


def markdown(record: dict) -> list[str]:
    s = record["settings"]
    lines = [
        f"Enumerable toy (40 completions), alpha {s['alpha']:g}, G {s['group']}, learning rate {s['learning_rate']:g} "
        f"constant, the head at its default rate, {s['steps']} steps, seeds {s['seeds']}: exact KL, medians over "
        "seeds. 'p^a / Z' is the pure alpha-power; LA-TB's fixed point carries the length tilt exp(-lambda len(y)).",
        "",
    ]
    return lines + md_table(HEADER, table_rows(record)) + ["", "![toy objectives](toy_objectives.png)"]


def plot(record: dict, out: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, objective in enumerate(OBJECTIVES):
        for j, run in enumerate(r for r in record["runs"] if r["objective"] == objective):
            steps = [c["step"] for c in run["curve"]]
            label = f"{objective} ({FIXED_POINTS[objective]})" if j == 0 else None
            for ax, key in zip(axes, ("kl", "kl_to_power")):
                ax.plot(steps, [max(c[key], 1e-5) for c in run["curve"]], color=f"C{i}", lw=1, alpha=0.8, label=label)
    for ax, title in zip(axes, ("exact KL(pi || own fixed point)", "exact KL(pi || p^alpha / Z), the pure power")):
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Enumerable toy, alpha {record['settings']['alpha']:g}: each objective, one line per seed",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(os.path.join(out, "toy_objectives.png"), dpi=110)
    plt.close(fig)
