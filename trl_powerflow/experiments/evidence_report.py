"""The report of the small-scale experiment: results.json, results.md (tables with 95% t-intervals over seeds,
the share of GRPO's gain) and the plots in `<output_dir>/report`, copied with each comparison's results to the docs
folder when asked."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics

from ..evaluation.markdown import fmt, md_table
from . import toy_objectives
from .evidence_plots import plot_all
from .evidence_summary import (
    CREATIVE_KEYS,
    DIAGNOSIS_KEYS,
    POWER_KEYS,
    SEED_KEYS,
    SWEEP_KEYS,
    creative_summary,
    eval_rows,
    learning_rate_summary,
    live_distance,
    machine,
    seeds_summary,
    stage_seconds,
    sweep_summary,
)
from .seed_statistics import fmt_interval, mean_interval

REPORT_FILES = (
    "results.md", "results.json", "reasoning_seeds.png", "alpha_sweep.png", "creative_frontier.png",
    "target_kl_live.png", "toy_target_distance.png", "toy_objectives.png",
)  # fmt: skip


def learning_rate_section(lr: dict) -> list[str]:
    """Stage learning_rate: GRPO and PowerFlow at the higher shared rate, and the share of GRPO's gain recovered."""
    if not lr.get("seeds"):
        return []
    lines = ["", f"### The learning rate: GRPO and PowerFlow at {lr['learning_rate']:g} after {lr['step']} steps", ""]
    lines.append(
        f"Stage learning_rate: the recipe with learning rate {lr['learning_rate']:g} instead of "
        f"{lr['recipe_learning_rate']:g}, seeds {lr['seeds']}, one {lr['step']}-step run per seed and method. R as "
        "above; 'each at its better rate' pairs each method's run at the rate (of the two) with the higher mean."
    )
    lines.append("")
    rows = []
    for method, entry in lr["methods"].items():
        per = ", ".join(fmt(v["avg@8"]) for v in entry["per_seed"].values())
        rows.append([method, f"{lr['learning_rate']:g}"] + [fmt_interval(entry["stats"][k]) for k, _ in SEED_KEYS]
                    + [per])  # fmt: skip
    lines += md_table(["method", "learning rate"] + [label for _, label in SEED_KEYS] + ["avg@8 per seed"], rows)
    lines.append("")
    rows = []
    for name, share in lr["shares"].items():
        interval = fmt_interval({"mean": share["share"], "low": share["low"], "high": share["high"]}, 2)
        rows.append([name, f"{share['powerflow_lr']:g}", f"{share['grpo_lr']:g}", interval,
                     ", ".join(fmt(v, 2) for v in share["per_seed"])])  # fmt: skip
    return lines + md_table(["comparison", "PowerFlow lr", "GRPO lr", "share R [95% CI]", "per seed"], rows)


def report_markdown(args, report: dict, command: str) -> str:
    seeds = report["seeds"]
    n, n2 = seeds["budgets"]
    lines = ["# Small-scale experiment: results", ""]
    lines += ["Regenerate everything (all runs, tables, plots) with:", "", "```bash", command, "```", ""]
    lines.append(f"Machine: {report['machine']}.")
    secs = report["stage_seconds"]
    total = sum(v for v in secs.values() if v)
    lines.append(
        "Compute time per stage (as recorded when each stage ran; reused stages keep their times): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in secs.items() if v)
        + f"; total {total / 60:.1f} min. Wall time of the invocation that wrote this report: "
        f"{report['wall_seconds'] / 60:.1f} min, {args.jobs} job(s) side by side."
    )
    lines += ["", f"## 1. Reasoning: {len(seeds['seeds'])} seeds per method, budgets {n} and {n2} steps", ""]
    lines.append(
        f"Seeds {seeds['seeds']}; one {n2}-step run per seed and method at a constant learning rate, evaluated at "
        f"step {n} and step {n2} ({len(eval_rows(args))} held-out prompts x 8 samples, temperature 1, the seed's "
        "sampling). Mean over seeds with a 95% t-interval in brackets; per-seed values in results.json."
    )
    lines.append("")
    header = ["method", "steps"] + [label for _, label in SEED_KEYS] + ["avg@8 per seed"]
    rows = []
    for method, by_step in seeds["methods"].items():
        for step in (n, n2):
            if method == "base" and step == n2:
                continue
            entry = by_step[str(step)]
            stats = entry["stats"]
            per = ", ".join(fmt(v["avg@8"]) for v in entry["per_seed"].values())
            rows.append([method, 0 if method == "base" else step]
                        + [fmt_interval(stats[k]) for k, _ in SEED_KEYS] + [per])  # fmt: skip
    lines += md_table(header, rows)
    lines += ["", "### Share of supervised GRPO's gain recovered without labels", ""]
    lines.append(
        "R = mean(M - base) / mean(GRPO - base) on avg@8 for each label-free method M, gains paired by seed; 95% "
        "interval by the delta method with a t quantile (n - 1 degrees of freedom)."
    )
    lines.append("")
    rows = []
    for method, by_step in seeds["shares"].items():
        for step, share in by_step.items():
            interval = fmt_interval({"mean": share["share"], "low": share["low"], "high": share["high"]}, 2)
            rows.append([
                method, step, interval, ", ".join(fmt(v, 2) for v in share["per_seed"]),
                ", ".join(fmt(v) for v in share["pf_gain"]), ", ".join(fmt(v) for v in share["grpo_gain"]),
            ])  # fmt: skip
    lines += md_table(["method", "steps", "share R [95% CI]", "per seed", "gain per seed", "GRPO gain per seed"], rows)

    lines += learning_rate_section(report.get("learning_rate") or {})

    diag = report.get("diagnosis")
    if diag and diag.get("runs"):
        lines += ["", "### Where the probability mass goes (diagnosis)", ""]
        lines.append(
            f"The base's modal answer per prompt is taken from {diag['settings']['base_samples']} base samples; it is "
            f"right on {diag['base_mode_right_fraction']:.0%} of the held-out prompts. Mean over seeds (95% "
            "t-interval). 'acc. where base mode right/wrong': accuracy on the prompts whose base modal answer is "
            "right / wrong; 'wrong answers = base mode': share of the wrong samples that give the base's modal "
            "answer; 'maj answer = base mode': share of prompts whose majority answer is the base's modal answer."
        )
        lines.append("")
        groups = {}
        for key, metrics in diag["runs"].items():
            method, _, step = key.split("/")
            groups.setdefault((method, int(step[4:])), []).append(metrics)
        rows = []
        for (method, step), values in groups.items():
            rows.append([method, step] + [fmt_interval(mean_interval([v.get(k) for v in values]))
                                          for k, _ in DIAGNOSIS_KEYS])  # fmt: skip
        lines += md_table(["method", "steps"] + [label for _, label in DIAGNOSIS_KEYS], rows)

    lines += ["", f"## 2. Reasoning: alpha sweep after {n} steps (seed {args.seed})", ""]
    lines.append(f"alpha 4 and TTRL (the alpha -> infinity limit: majority vote) are the seed-{args.seed} runs above "
                 f"at step {n}; the base row is the untrained model.")  # fmt: skip
    lines.append("")
    rows = []
    for p in report["sweep"]:
        name = p.get("label") or f"PowerFlow alpha {p['alpha']:g}"
        alpha = "inf" if p["alpha"] == math.inf else f"{p['alpha']:g}"
        rows.append([name, "1 (untrained)" if p.get("label") == "base" else alpha]
                    + [fmt(p["metrics"].get(k)) for k, _ in SWEEP_KEYS])  # fmt: skip
    lines += md_table(["method", "alpha"] + [label for _, label in SWEEP_KEYS], rows)
    lines += ["", "![alpha sweep](alpha_sweep.png)"]

    lines += ["", f"## 3. Creative: quality/diversity frontier after {args.creative_steps if not args.quick else 2} "
              "steps from the aligned model", ""]  # fmt: skip
    creative = report["creative"]
    rows = []
    for a, m in sorted(creative.get("alphas", {}).items(), key=lambda kv: float(kv[0])):
        rows.append([f"PowerFlow alpha {float(a):g}"] + [fmt(m.get(k)) for k, _ in CREATIVE_KEYS])
    for name, other in creative.get("others", {}).items():
        rows.append([name] + [fmt(other["metrics"].get(k)) for k, _ in CREATIVE_KEYS])
    lines += md_table(["method"] + [label for _, label in CREATIVE_KEYS], rows)
    lines += ["", "![creative frontier](creative_frontier.png)"]

    lines += ["", "## 4. Power sampling of the base against PowerFlow's one-pass sampler", ""]
    ps = report.get("power_sampling") or {}
    lines.append(
        f"Same {ps.get('settings', {}).get('prompts', '?')} held-out prompts x 8 samples, sampling seed {args.seed}. "
        "Power sampling: Metropolis-Hastings on p_base^4 (M steps; M = 0 is "
        "the proposal alone, temperature 1/4). Cost = sampled tokens (incremental forward passes) per answer; "
        "PowerFlow's training cost is not in it."
    )
    lines.append("")
    rows = []
    seed0 = {m: seeds["methods"][m] for m in ("base", "powerflow", "grpo_accuracy")}
    first = str(args.seeds[0]) if args.seeds else "0"
    for m, label in (("base", "base, temperature 1 (one pass)"),):
        per = seed0[m][str(n)]["per_seed"]
        if per:
            v = next(iter(per.values()))
            rows.append([label, fmt(v.get("mean_completion_tokens"), 1)] + [fmt(v.get(k)) for k, _ in POWER_KEYS[1:]])
    for name, metrics in ps.get("rows", {}).items():
        rows.append([f"power sampling alpha 4, {name}", fmt(metrics.get("forward_passes_per_answer"), 1)]
                    + [fmt(metrics.get(k)) for k, _ in POWER_KEYS[1:]])  # fmt: skip
    for m, label in (("powerflow", "PowerFlow alpha 4"), ("grpo_accuracy", "GRPO + accuracy")):
        for step in (n, n2):
            per = seed0[m][str(step)]["per_seed"]
            v = per.get(int(first)) or per.get(first) or (next(iter(per.values())) if per else None)
            if v:
                rows.append([f"{label}, {step} steps (one pass)", fmt(v.get("mean_completion_tokens"), 1)]
                            + [fmt(v.get(k)) for k, _ in POWER_KEYS[1:]])  # fmt: skip
    lines += md_table(["sampler"] + [label for _, label in POWER_KEYS], rows)

    lines += ["", "## 5. Live distance to the target", ""]
    lines.append("![live target distance](target_kl_live.png)")
    live_rows = []
    for name, history in report["live"].items():
        kl = [h["powerflow/target_kl"] for h in history if h.get("powerflow/target_kl") is not None]
        lam = [h["powerflow/target_lambda"] for h in history if h.get("powerflow/target_lambda") is not None]
        dist = [h["powerflow/length_distortion"] for h in history if h.get("powerflow/length_distortion") is not None]
        if kl:
            w = max(1, min(10, len(kl) // 4))
            live_rows.append([name, fmt(statistics.fmean(kl[:w])), fmt(statistics.fmean(kl[-w:])),
                              fmt(statistics.fmean(lam[-w:])) if lam else "–",
                              fmt(statistics.fmean(dist[-w:])) if dist else "–"])  # fmt: skip
    lines.append("")
    lines += md_table(["run", "target_kl, first steps", "target_kl, last steps", "lambda, last steps",
                       "length distortion, last steps"], live_rows)  # fmt: skip
    toy = report.get("toy") or {}
    if toy.get("runs"):
        lines += ["", "Enumerable toy (alpha 2, exact values computable): windows of steps, mean of each.", ""]
        rows = []
        for run in toy["runs"]:
            s = run["steps"]
            w = max(1, len(s) // 4)
            for i in range(0, len(s), w):
                chunk = s[i : i + w]
                rows.append([
                    run["group"], f"{chunk[0]['step']}-{chunk[-1]['step']}",
                    fmt(statistics.fmean(c["exact_kl"] for c in chunk)),
                    fmt(statistics.fmean(c["estimated_kl"] for c in chunk)),
                    fmt(run["exact_lambda"]), fmt(statistics.fmean(c["estimated_lambda"] for c in chunk)),
                ])  # fmt: skip
        lines += md_table(["G", "steps", "exact KL", "estimated KL", "exact lambda", "estimated lambda"], rows)
        lines += ["", "![toy target distance](toy_target_distance.png)"]
    if toy.get("objectives"):
        lines += ["", "## 6. What the length tilt does: every objective on the enumerable toy", ""]
        lines += toy_objectives.markdown(toy["objectives"])
    lines += ["", "Per-comparison tables (every method and step) are in `comparisons/*/results.md`.", ""]
    return "\n".join(lines)


def write_report(args, command: str, timings: dict, wall_seconds: float) -> str:
    """Collect every stage's results into results.json / results.md / plots in `<output_dir>/report` (and copy them
    with each comparison's own results to `args.docs_dir` when given). Returns the report directory."""
    from .small_scale import ablations_argv, lr_dir, seed_dir, sweep_argv

    out = os.path.join(args.output_dir, "report")
    os.makedirs(out, exist_ok=True)

    def stage_record(name):
        path = os.path.join(args.output_dir, f"{name}.json")
        if name in args.stages and os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        return None

    seeds = seeds_summary(args)
    report = {
        "machine": machine(),
        "command": command,
        "wall_seconds": wall_seconds,
        "stage_seconds": stage_seconds(args),
        "invocation_seconds": timings,
        "settings": {k: v for k, v in vars(args).items() if k not in ("force",)},
        "seeds": seeds,
        "learning_rate": learning_rate_summary(args, seeds),
        "sweep": sweep_summary(args, seeds),
        "creative": creative_summary(args),
        "diagnosis": stage_record("diagnosis"),
        "power_sampling": stage_record("power_sampling"),
        "toy": stage_record("toy") or {},
        "live": live_distance(args),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=2, default=lambda v: None)
    plot_all(report, out)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(report_markdown(args, report, command))
    if args.docs_dir:
        os.makedirs(args.docs_dir, exist_ok=True)
        for name in REPORT_FILES:
            shutil.copyfile(os.path.join(out, name), os.path.join(args.docs_dir, name))
        compares = {f"seed{s}": seed_dir(args, s) for s in args.seeds}
        compares.update({f"learning_rate_seed{s}": lr_dir(args, s) for s in args.seeds})
        compares.update(alpha_sweep=sweep_argv(args)[0], ablations=ablations_argv(args)[0])
        compares["creative"] = os.path.join(args.output_dir, "creative", "compare")
        for name, source in compares.items():
            if not os.path.isfile(os.path.join(source, "results.json")):
                continue
            target = os.path.join(args.docs_dir, "comparisons", name)
            os.makedirs(target, exist_ok=True)
            for file in ("results.md", "results.json", "accuracy_vs_step.png", "quality_vs_diversity.png"):
                if os.path.isfile(os.path.join(source, file)):
                    shutil.copyfile(os.path.join(source, file), os.path.join(target, file))
    return out
