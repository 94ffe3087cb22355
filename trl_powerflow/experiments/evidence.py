r"""The evidence stages and the report of the small-scale experiment (`trl_powerflow.experiments.small_scale`).

Statistics (`mean_interval`, `recovery_share`):

- per method and budget, the mean over seeds with a 95% t-interval, mean +- t_{0.975, n-1} sd / sqrt(n) (the seed
  changes the RL run and the evaluation sampling, so the interval holds both sources of noise; the base model is
  fixed and evaluated with every seed's sampling);
- the share of supervised GRPO's gain that PowerFlow recovers, R = mean_s(PF_s - base_s) / mean_s(GRPO_s - base_s)
  (gains paired by seed), with a delta-method 95% interval: Var(R) ~= [Var(d_PF) - 2 R Cov(d_PF, d_GRPO)
  + R^2 Var(d_GRPO)] / (n mean(d_GRPO)^2), and a t_{0.975, n-1} quantile. Per-seed ratios are reported too.

Stages (each writes `<output_dir>/<stage>.json`, reused on a re-run unless `force`, with the seconds it took):

- `diagnosis_stage`: samples the base (to find its modal answer per prompt) and every seed's GRPO / TTRL / PowerFlow
  at N and 2N steps; splits accuracy by whether the base's modal answer is right, and counts how many wrong answers
  are the base's modal answer: where sharpening toward p_base^alpha can and cannot help.
- `power_sampling_stage`: MCMC power sampling of the base at alpha 4 (`trl_powerflow.evaluation.power_sampling`,
  M Metropolis-Hastings steps; M = 0 is sampling at temperature 1/alpha) against PowerFlow's one-pass sampler on the
  same held-out prompts, by forward passes (= sampled tokens) per answer.
- `toy_stage`: `toy_target_distance` trains PowerFlow on the enumerable toy and records, at every step, the logged
  estimate `powerflow/target_kl` / `powerflow/target_lambda` next to the exact KL(pi_theta || pi*) and lambda; then
  every objective's exact KL to its own fixed point and to the pure alpha-power (`toy_objectives.py`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import time

from . import toy_objectives
from .markdown import fmt, md_table

# 0.975 quantiles of Student's t by degrees of freedom (scipy is optional)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
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
REPORT_FILES = (
    "results.md", "results.json", "reasoning_seeds.png", "alpha_sweep.png", "creative_frontier.png",
    "target_kl_live.png", "toy_target_distance.png", "toy_objectives.png",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- statistics
def t_quantile(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover
        return T_975.get(df, 1.96)


def mean_interval(values) -> dict:
    """Mean and 95% t-interval over seeds (no interval from one value)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0, "values": []}
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1, "values": values}
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values), "values": values}


def recovery_share(pf, grpo, base) -> dict:
    """R = mean(PF - base) / mean(GRPO - base), gains paired by seed, with a delta-method 95% t-interval."""
    d_pf = [p - b for p, b in zip(pf, base)]
    d_g = [g - b for g, b in zip(grpo, base)]
    n = len(d_pf)
    per_seed = [a / b if b else None for a, b in zip(d_pf, d_g)]
    m_pf, m_g = statistics.fmean(d_pf), statistics.fmean(d_g)
    out = {"share": m_pf / m_g if m_g else None, "per_seed": per_seed, "pf_gain": d_pf, "grpo_gain": d_g, "n": n}
    out["low"] = out["high"] = None
    if n >= 2 and m_g:
        r = m_pf / m_g
        cov = sum((a - m_pf) * (b - m_g) for a, b in zip(d_pf, d_g)) / (n - 1)
        var = (statistics.variance(d_pf) - 2 * r * cov + r * r * statistics.variance(d_g)) / (n * m_g * m_g)
        half = t_quantile(n - 1) * math.sqrt(max(var, 0.0))
        out["low"], out["high"] = r - half, r + half
    return out


def fmt_interval(stats: dict, digits: int = 3) -> str:
    if stats["mean"] is None:
        return "–"
    if stats["low"] is None:
        return fmt(stats["mean"], digits)
    return f"{fmt(stats['mean'], digits)} [{fmt(stats['low'], digits)}, {fmt(stats['high'], digits)}]"


# -------------------------------------------------------------------------------------------------- reading runs
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


def log_history(run_dir: str) -> list[dict]:
    """The full per-step log_history of a training run (last checkpoint's trainer_state.json)."""
    from .compare import checkpoints

    states = [p for _, p in checkpoints(run_dir, -1) if os.path.isfile(os.path.join(p, "trainer_state.json"))]
    if not states:
        return []
    with open(os.path.join(states[-1], "trainer_state.json")) as f:
        return [h for h in json.load(f).get("log_history", []) if "step" in h]


def cached_stage(args, name: str, settings: dict):
    path = os.path.join(args.output_dir, f"{name}.json")
    if not args.force and os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
        if record.get("settings") == settings:
            print(f"[experiment] {name}: reusing {path}", flush=True)
            return record
    return None


def save_stage(args, name: str, record: dict) -> dict:
    with open(os.path.join(args.output_dir, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def _torch_setup():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def _eval_rows(args) -> list[dict]:
    with open(os.path.join(args.output_dir, "reasoning", "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------------ diagnosis
def _sample_answers(path, rows, num_samples, seed, method="sample"):
    from ..data.answers import answers_equivalent, reference_answer
    from ..evaluation.generation import evaluate_model, load_model_and_tokenizer
    from .synthetic_tasks import chain_metrics

    model, tokenizer = load_model_and_tokenizer(path, device="cpu")
    result = evaluate_model(
        model, tokenizer, rows, num_samples=num_samples, max_new_tokens=48, seed=seed, batch_size=16,
        embedder=None, return_completions=True,
    )  # fmt: skip
    completions = result.pop("completions")
    metrics = {**result["metrics"], **chain_metrics(rows, completions)}
    answers = [[s["answer"] for s in group] for group in completions]
    refs = [reference_answer(r.get("answer")) for r in rows]
    correct = [[answers_equivalent(a, ref) for a in group] for group, ref in zip(answers, refs)]
    return metrics, answers, correct


def _mode(values):
    counts = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return max(counts, key=counts.get) if counts else None


def diagnosis_stage(args) -> dict:
    """Where each trained model's mass goes, against the base's modal answer per prompt (see the module doc)."""
    from ..data.answers import answers_equivalent, reference_answer
    from .compare import checkpoints
    from .small_scale import DIAGNOSIS_METHODS, base_model_path, half_budget, seed_dir

    n = half_budget(args)
    rows = _eval_rows(args)
    base_samples = 4 if args.quick else 32
    settings = {"seeds": args.seeds, "n": n, "prompts": len(rows), "base_samples": base_samples}
    cached = cached_stage(args, "diagnosis", settings)
    if cached:
        return cached
    _torch_setup()
    start = time.time()
    _, base_answers, _ = _sample_answers(base_model_path(), rows, base_samples, seed=12345)
    base_mode = [_mode(a) for a in base_answers]
    refs = [reference_answer(r.get("answer")) for r in rows]
    mode_right = [answers_equivalent(m, ref) for m, ref in zip(base_mode, refs)]
    record = {"settings": settings, "base_mode_right_fraction": sum(mode_right) / len(rows), "runs": {}}
    for seed in args.seeds:
        for method in DIAGNOSIS_METHODS:
            run_dir = os.path.join(seed_dir(args, seed), "runs", method)
            if method == "base":
                targets = [(0, base_model_path())]
            else:
                found = dict(checkpoints(run_dir, 2 * n))
                targets = [(step, found[step]) for step in (n, 2 * n) if step in found]
            for step, path in targets:
                metrics, answers, correct = _sample_answers(path, rows, 8, seed)
                right = [sum(c) / len(c) for c in correct]
                wrong = [
                    (a, m) for group, cs, m in zip(answers, correct, base_mode) for a, c in zip(group, cs) if not c
                ]

                def mean_over(mask, right=right):
                    values = [r for r, keep in zip(right, mask) if keep]
                    return sum(values) / len(values) if values else None

                metrics.update(
                    acc_base_mode_right=mean_over(mode_right),
                    acc_base_mode_wrong=mean_over([not m for m in mode_right]),
                    wrong_is_base_mode=sum(a == m for a, m in wrong) / len(wrong) if wrong else None,
                    maj_is_base_mode=sum(_mode(g) == m for g, m in zip(answers, base_mode)) / len(rows),
                )
                keep = {key for key, _ in DIAGNOSIS_KEYS}
                record["runs"][f"{method}/seed{seed}/step{step}"] = {k: v for k, v in metrics.items() if k in keep}
                print(f"[experiment] diagnosis {method} seed {seed} step {step}: avg@8 {metrics['avg@8']:.3f}")
    record["seconds"] = time.time() - start
    return save_stage(args, "diagnosis", record)


# ------------------------------------------------------------------------------------------------ power sampling
def power_sampling_stage(args) -> dict:
    """Power sampling of the base (alpha 4, M MH steps) on the held-out prompts, by forward passes per answer."""
    from ..evaluation.generation import evaluate_power_sampling, load_model_and_tokenizer
    from .small_scale import base_model_path

    rows = _eval_rows(args)
    steps = [0, 1] if args.quick else [0, 1, 2, 4]
    settings = {"alpha": 4.0, "mcmc_steps": steps, "prompts": len(rows), "num_samples": 8, "seed": args.seed}
    cached = cached_stage(args, "power_sampling", settings)
    if cached:
        return cached
    _torch_setup()
    from .synthetic_tasks import chain_metrics

    start = time.time()
    model, tokenizer = load_model_and_tokenizer(base_model_path(), device="cpu")
    record = {"settings": settings, "rows": {}}
    for m in steps:
        t0 = time.time()
        result = evaluate_power_sampling(
            model, tokenizer, rows, alpha=4.0, mcmc_steps=m, num_samples=8, max_new_tokens=48, seed=args.seed,
            batch_size=8, embedder=None,
        )  # fmt: skip
        metrics = {**result["metrics"], **chain_metrics(rows, result["completions"])}
        metrics["seconds"] = time.time() - t0
        record["rows"][f"M={m}"] = metrics
        print(f"[experiment] power sampling M={m}: avg@8 {metrics['avg@8']:.3f}, "
              f"{metrics['forward_passes_per_answer']:.1f} forward passes / answer", flush=True)  # fmt: skip
    record["seconds"] = time.time() - start
    return save_stage(args, "power_sampling", record)


# --------------------------------------------------------------------------------------------------------- toy
def toy_target_distance(
    model_dir: str,
    output_dir: str,
    *,
    alpha: float = 2.0,
    group: int = 32,
    steps: int = 48,
    learning_rate: float = 3e-3,
    log_z_learning_rate: float = 5e-2,
    seed: int = 0,
) -> dict:
    """Train PowerFlow on the enumerable toy (prompt "q", completions of up to 3 tokens, 40 in all; the setting of
    tests/test_target_distance_live.py) and return, per step, the exact KL(pi_theta || pi*) of the policy that
    sampled the step (read before its update), the exact lambda of pi* = p_base^alpha exp(-lambda |y|) and the
    trainer's logged estimates `powerflow/target_kl` and `powerflow/target_lambda`."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from .. import PowerFlowConfig, PowerFlowTrainer
    from ..toys.enumerable import (
        TOY_PROMPT,
        TOY_TOKENS,
        completion_lengths,
        completion_logprobs,
        enumerate_completions,
        la_tb_fixed_point,
        la_tb_lambda,
        toy_training_args,
    )

    completions = enumerate_completions(3)
    lengths = completion_lengths(completions).double()
    prompt = [TOY_TOKENS.index(TOY_PROMPT)]

    @torch.no_grad()
    def exact_logp(model):
        training = model.training
        model.eval()
        logp = completion_logprobs(model, prompt, completions).double()
        model.train(training)
        return logp

    base_logp = exact_logp(AutoModelForCausalLM.from_pretrained(model_dir))
    target = la_tb_fixed_point(base_logp, lengths, alpha).double()
    lam = float(la_tb_lambda(base_logp, lengths, alpha))

    class ExactKL(TrainerCallback):
        def __init__(self):
            self.values = []

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            logp = exact_logp(model)
            self.values.append((logp.exp() * (logp - target)).sum().item())

    config = PowerFlowConfig(
        **toy_training_args(
            output_dir,
            group=group,
            steps=steps,
            seed=seed,
            alpha=alpha,
            learning_rate=learning_rate,
            log_z_learning_rate=log_z_learning_rate,
            logging_steps=1,
        )  # fmt: skip
    )
    exact = ExactKL()
    trainer = PowerFlowTrainer(
        model=model_dir, args=config, train_dataset=Dataset.from_dict({"prompt": [TOY_PROMPT] * 64}), callbacks=[exact]
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "powerflow/target_kl" in h]
    return {
        "alpha": alpha,
        "group": group,
        "exact_lambda": lam,
        "steps": [
            {
                "step": h["step"],
                "exact_kl": kl,
                "estimated_kl": h["powerflow/target_kl"],
                "estimated_lambda": h["powerflow/target_lambda"],
            }
            for h, kl in zip(history, exact.values)
        ],
    }


def toy_stage(args) -> dict:
    groups = [8] if args.quick else [32, 8]
    steps = 4 if args.quick else 48
    settings = {"groups": groups, "steps": steps, "alpha": 2.0, "objectives": list(toy_objectives.OBJECTIVES)}
    cached = cached_stage(args, "toy", settings)
    if cached:
        return cached
    _torch_setup()
    from ..toys.enumerable import save_toy_model

    start = time.time()
    out = os.path.join(args.output_dir, "toy")
    model_dir = save_toy_model(os.path.join(out, "model"))
    runs = [toy_target_distance(model_dir, os.path.join(out, f"run_g{g}"), group=g, steps=steps) for g in groups]
    objectives = toy_objectives.toy_objective_runs(model_dir, os.path.join(out, "objectives"), args.quick)
    record = {"settings": settings, "runs": runs, "objectives": objectives, "seconds": time.time() - start}
    return save_stage(args, "toy", record)


# ---------------------------------------------------------------------------------------------------- the report
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
    from .small_scale import ablations_argv, seed_dir, sweep_argv

    def compare(out):
        r = load_results(out)
        return r["info"]["compute_seconds"] if r else None

    seconds = {}
    if "seeds" in args.stages:
        values = [compare(seed_dir(args, s)) for s in args.seeds]
        seconds["seeds"] = sum(v for v in values if v) or None
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
            per_seed = {}
            for s, r in runs.items():
                m = r["methods"].get(method)
                metrics = metrics_at(m, step) if m and m.get("evals") else None
                if metrics:
                    per_seed[s] = {k: metrics.get(k) for k, _ in SEED_KEYS}
            stats = {k: mean_interval([v[k] for v in per_seed.values()]) for k, _ in SEED_KEYS}
            out["methods"].setdefault(method, {})[str(step)] = {"per_seed": per_seed, "stats": stats}
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
    from .compare import smooth

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
        f"step {n} and step {n2} ({len(_eval_rows(args))} held-out prompts x 8 samples, temperature 1, the seed's "
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
    from .small_scale import ablations_argv, seed_dir, sweep_argv

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


def run_experiment(args, command: str) -> dict[str, float]:
    """Every stage of `args.stages` (the options of `trl-powerflow experiment`, see `trl_powerflow.cli.experiment`),
    `args.jobs` jobs at a time (`small_scale.run_jobs`), then the report (tables, plots, results.json) in
    `args.output_dir`/report and, with `args.docs_dir`, there (not with `args.no_report`). Returns the seconds of
    each stage of this invocation (summed over its jobs)."""
    from .small_scale import STAGES, experiment_jobs, reasoning_data, run_jobs

    os.makedirs(args.output_dir, exist_ok=True)
    stages = [s for s in STAGES if s in args.stages]
    if {"seeds", "sweep", "ablations", "diagnosis", "power_sampling"} & set(stages):
        reasoning_data(args)
    in_process = {
        "diagnosis": lambda: diagnosis_stage(args),
        "power_sampling": lambda: power_sampling_stage(args),
        "toy": lambda: toy_stage(args),
    }
    started = time.time()
    timings = run_jobs(experiment_jobs(args, stages, in_process), args.jobs)
    wall = time.time() - started
    if not args.no_report:
        report_dir = write_report(args, command, timings, wall)
        print(f"[experiment] wrote {report_dir}")
    print(f"[experiment] done in {wall / 60:.1f} min of wall time, {args.jobs} job(s) at a time; compute per stage: "
          + json.dumps({k: round(v) for k, v in timings.items()}), flush=True)  # fmt: skip
    return timings
