"""What the small-scale experiment's report reads: the metric keys of its tables, the saved results of every
comparison and training run, and their summaries per stage (seeds, alpha sweep, creative task, live distance)."""

from __future__ import annotations

import json
import math
import os
import platform

from .compare import log_history
from .seed_statistics import mean_interval, recovery_share

SEED_KEYS = (
    ("avg@8", "avg@8"),
    ("pass@8", "pass@8"),
    ("maj@8", "maj@8"),
    ("mean_completion_tokens", "tokens"),
    ("distinct_answer_fraction", "distinct answers"),
    ("guess_fraction", "guesses"),
    ("step_error_rate", "step errors"),
)
SWEEP_KEYS = SEED_KEYS
CREATIVE_KEYS = (
    ("quality", "quality"),
    ("distinct_poems", "distinct poems"),
    ("distinct_valid_poems", "distinct valid poems"),
    ("semantic_diversity", "semantic div."),
    ("mean_completion_tokens", "tokens"),
)
POWER_KEYS = (
    ("forward_passes_per_answer", "forward passes / answer"),
    ("avg@8", "avg@8"),
    ("maj@8", "maj@8"),
    ("pass@8", "pass@8"),
    ("distinct_answer_fraction", "distinct answers"),
    ("guess_fraction", "guesses"),
)
DIAGNOSIS_KEYS = (
    ("avg@8", "avg@8"),
    ("acc_base_mode_right", "acc. where base mode right"),
    ("acc_base_mode_wrong", "acc. where base mode wrong"),
    ("wrong_is_base_mode", "wrong answers = base mode"),
    ("maj_is_base_mode", "maj answer = base mode"),
    ("mean_completion_tokens", "tokens"),
    ("guess_fraction", "guesses"),
    ("distinct_answer_fraction", "distinct answers"),
)
METHOD_LABELS = {
    "base": "base (shipped, not trained)",
    "grpo_accuracy": "GRPO + accuracy (labels)",
    "ttrl": "TTRL (majority vote)",
    "empo": "EMPO (semantic entropy)",
    "intuitor": "Intuitor (self-certainty)",
    "powerflow": "PowerFlow alpha 4 (LA-TB)",
    "powerflow_la_tb_exact": "PowerFlow alpha 4, exact-length (la_tb_exact)",
    "powerflow_token_balance": "PowerFlow alpha 4, token balance",
}


def eval_rows(args) -> list[dict]:
    """The held-out reasoning prompts of the experiment (written by `small_scale.reasoning_data`)."""
    with open(os.path.join(args.output_dir, "reasoning", "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


def load_results(out: str) -> dict | None:
    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def metrics_at(result: dict, step: int) -> dict | None:
    """The evaluation of a method at `step` (a not-trained method: its only evaluation)."""
    evals = result.get("evals", [])
    if result.get("trainer") is None:
        return evals[0]["metrics"] if evals else None
    for e in evals:
        if e["step"] == step:
            return e["metrics"]
    return None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
        f"(torch {torch.__version__}, {platform.system()} {platform.release()})"
    )


def stage_seconds(args) -> dict[str, float]:
    """Compute time of every stage, as recorded when it actually ran (reused stages keep their times)."""
    from .small_scale import ablations_argv, lr_dir, seed_dir, sweep_argv

    def compare(out):
        r = load_results(out)
        return r["info"]["compute_seconds"] if r else None

    seconds = {}
    if "seeds" in args.stages:
        values = [compare(seed_dir(args, s)) for s in args.seeds]
        seconds["seeds"] = sum(v for v in values if v) or None
    if "learning_rate" in args.stages:
        values = [compare(lr_dir(args, s)) for s in args.seeds]
        seconds["learning_rate"] = sum(v for v in values if v) or None
    if "sweep" in args.stages:
        seconds["sweep"] = compare(sweep_argv(args)[0])
    if "ablations" in args.stages:
        seconds["ablations"] = compare(ablations_argv(args)[0])
    if "creative" in args.stages:
        pre = os.path.join(args.output_dir, "creative", "pretrain.json")
        c = compare(os.path.join(args.output_dir, "creative", "compare"))
        if os.path.isfile(pre):
            with open(pre) as f:
                c = (c or 0) + json.load(f)["total_seconds"]
        seconds["creative"] = c
    for name in ("diagnosis", "power_sampling", "toy"):
        path = os.path.join(args.output_dir, f"{name}.json")
        if name in args.stages and os.path.isfile(path):
            with open(path) as f:
                seconds[name] = json.load(f).get("seconds")
    return seconds


def seeds_summary(args) -> dict:
    from .small_scale import SEED_METHODS, half_budget, seed_dir

    n = half_budget(args)
    runs = {s: load_results(seed_dir(args, s)) for s in args.seeds}
    runs = {s: r for s, r in runs.items() if r}
    out = {"budgets": [n, 2 * n], "seeds": sorted(runs), "methods": {}, "shares": {}}
    for method in SEED_METHODS:
        for step in (n, 2 * n):
            out["methods"].setdefault(method, {})[str(step)] = per_seed_rows(runs, method, step)
    rows = out["methods"]
    label_free = [m for m in rows if m not in ("base", "grpo_accuracy")]
    for step in (n, 2 * n):

        def acc(m, step=step, seeds=out["seeds"]):
            return [rows[m][str(step)]["per_seed"][s]["avg@8"] for s in seeds]

        for method in label_free:
            needed = ("base", "grpo_accuracy", method)
            seeds = [s for s in out["seeds"] if all(s in rows[m][str(step)]["per_seed"] for m in needed)]
            if seeds:
                share = recovery_share(acc(method, seeds=seeds), acc("grpo_accuracy", seeds=seeds),
                                       acc("base", seeds=seeds))  # fmt: skip
                out["shares"].setdefault(method, {})[str(step)] = {**share, "seeds": seeds}
    out["share"] = out["shares"].get("powerflow", {})
    return out


def per_seed_rows(runs: dict, method: str, step: int) -> dict:
    """{"per_seed": {seed: SEED_KEYS metrics at `step`}, "stats": their mean and 95% t-interval} of one method."""
    per_seed = {}
    for s, r in runs.items():
        m = r["methods"].get(method)
        metrics = metrics_at(m, step) if m and m.get("evals") else None
        if metrics:
            per_seed[s] = {k: metrics.get(k) for k, _ in SEED_KEYS}
    return {"per_seed": per_seed, "stats": {k: mean_interval([v[k] for v in per_seed.values()]) for k, _ in SEED_KEYS}}


def learning_rate_summary(args, seeds: dict) -> dict:
    """Stage learning_rate: GRPO and PowerFlow at `LEARNING_RATE_HIGH` after N steps, per seed, and the share of
    GRPO's gain R (as in `seeds_summary`, base paired by seed) at that shared rate and with each method at the better
    of the two rates (the higher mean avg@8 at N; the recipe's rate from the seeds stage)."""
    from .small_scale import LEARNING_RATE_HIGH, LR_METHODS, RECIPE_LEARNING_RATE, half_budget, lr_dir

    n = half_budget(args)
    runs = {s: r for s in args.seeds if (r := load_results(lr_dir(args, s)))}
    methods = {m: per_seed_rows(runs, m, n) for m in LR_METHODS}
    out = {"learning_rate": LEARNING_RATE_HIGH, "recipe_learning_rate": RECIPE_LEARNING_RATE, "step": n,
           "seeds": sorted(runs), "methods": methods, "shares": {}}  # fmt: skip
    rates = {LEARNING_RATE_HIGH: out["methods"]}
    rates[RECIPE_LEARNING_RATE] = {m: seeds["methods"][m][str(n)] for m in LR_METHODS if m in seeds.get("methods", {})}
    common = [s for s in out["seeds"] if all(s in rows[m]["per_seed"] for rows in rates.values() for m in rows)]
    if not common or len(rates[RECIPE_LEARNING_RATE]) < len(LR_METHODS):
        return out

    def acc(rate, method):
        return [rates[rate][method]["per_seed"][s]["avg@8"] for s in common]

    def better(method):
        return max(rates, key=lambda rate: sum(acc(rate, method)))

    base = acc(LEARNING_RATE_HIGH, "base")
    for name, pf_rate, grpo_rate in (
        ("shared", LEARNING_RATE_HIGH, LEARNING_RATE_HIGH),
        ("each at its better rate", better("powerflow"), better("grpo_accuracy")),
    ):
        share = recovery_share(acc(pf_rate, "powerflow"), acc(grpo_rate, "grpo_accuracy"), base)
        out["shares"][name] = {**share, "seeds": common, "powerflow_lr": pf_rate, "grpo_lr": grpo_rate}
    return out


def live_distance(args) -> dict:
    """`powerflow/target_kl`, `target_lambda`, `length_distortion` per step of the reasoning PowerFlow runs."""
    from .small_scale import alpha_name, seed_dir, sweep_argv

    keys = ("powerflow/target_kl", "powerflow/target_lambda", "powerflow/length_distortion")
    runs = {}
    for s in args.seeds:
        runs[f"alpha 4, seed {s}"] = os.path.join(seed_dir(args, s), "runs", "powerflow")
    for a in args.alphas:
        runs[f"alpha {a:g}, seed {args.seed}"] = os.path.join(sweep_argv(args)[0], "runs", alpha_name(a))
    out = {}
    for name, run_dir in runs.items():
        if os.path.isdir(run_dir):
            history = [{"step": h["step"], **{k: h[k] for k in keys if k in h}} for h in log_history(run_dir)]
            if any(keys[0] in h for h in history):
                out[name] = history
    return out


def sweep_summary(args, seeds: dict) -> list[dict]:
    from .small_scale import alpha_name, half_budget, seed_dir, sweep_argv

    n = half_budget(args)
    sweep = load_results(sweep_argv(args)[0])
    seed0 = load_results(seed_dir(args, args.seed))
    points = []
    for a in args.alphas:
        m = sweep and sweep["methods"].get(alpha_name(a))
        if m and m.get("evals"):
            points.append({"alpha": a, "metrics": metrics_at(m, n)})
    if seed0 and seed0["methods"].get("powerflow", {}).get("evals"):
        points.append({"alpha": 4.0, "metrics": metrics_at(seed0["methods"]["powerflow"], n)})
    points.sort(key=lambda p: p["alpha"])
    for name, alpha in (("ttrl", math.inf), ("base", 1.0)):
        if seed0 and seed0["methods"].get(name, {}).get("evals"):
            points.append({"alpha": alpha, "label": name, "metrics": metrics_at(seed0["methods"][name], n)})
    return points


def creative_summary(args) -> dict:
    from .small_scale import alpha_name

    results = load_results(os.path.join(args.output_dir, "creative", "compare"))
    if not results:
        return {}
    names = {0.5: "powerflow_low_alpha", 2.0: "powerflow"}
    out = {"alphas": {}, "others": {}}
    for a in args.creative_alphas:
        m = results["methods"].get(names.get(a, alpha_name(a)))
        if m and m.get("evals"):
            out["alphas"][a] = m["evals"][-1]["metrics"]
    flows = {names.get(a, alpha_name(a)) for a in args.creative_alphas}
    for name, m in results["methods"].items():
        if name not in flows and m.get("evals"):
            out["others"][name] = {"metrics": m["evals"][-1]["metrics"], "trainer": m["trainer"]}
    return out
