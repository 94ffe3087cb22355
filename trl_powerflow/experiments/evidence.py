r"""The evidence stages of the small-scale experiment (`trl_powerflow.experiments.small_scale`), and
`run_experiment`, which runs every stage and then writes the report (`evidence_report.py`).

Stages (each writes `<output_dir>/<stage>.json`, reused on a re-run unless `force`, with the seconds it took):

- `diagnosis_stage`: samples the base (to find its modal answer per prompt) and every seed's GRPO / TTRL / PowerFlow
  at N and 2N steps; splits accuracy by whether the base's modal answer is right, and counts how many wrong answers
  are the base's modal answer: where sharpening toward p_base^alpha can and cannot help.
- `power_sampling_stage`: MCMC power sampling of the base at alpha 4 (`trl_powerflow.evaluation.power_sampling`,
  M Metropolis-Hastings steps; M = 0 is sampling at temperature 1/alpha) against PowerFlow's one-pass sampler on the
  same held-out prompts, by forward passes (= sampled tokens) per answer.
- `toy_stage`: `toys.objective_curves.toy_target_distance` trains PowerFlow on the enumerable toy and records, at
  every step, the logged estimate `powerflow/target_kl` / `powerflow/target_lambda` next to the exact
  KL(pi_theta || pi*) and lambda; then every objective's exact KL to its own fixed point and to the pure alpha-power
  (`toy_objectives.py`).
"""

from __future__ import annotations

import json
import os
import time

from . import toy_objectives
from .evidence_report import write_report
from .evidence_summary import DIAGNOSIS_KEYS, eval_rows


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
    rows = eval_rows(args)
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

    rows = eval_rows(args)
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


def toy_stage(args) -> dict:
    groups = [8] if args.quick else [32, 8]
    steps = 4 if args.quick else 48
    settings = {"groups": groups, "steps": steps, "alpha": 2.0, "objectives": list(toy_objectives.OBJECTIVES)}
    cached = cached_stage(args, "toy", settings)
    if cached:
        return cached
    _torch_setup()
    from ..toys.enumerable import save_toy_model
    from ..toys.objective_curves import toy_target_distance

    start = time.time()
    out = os.path.join(args.output_dir, "toy")
    model_dir = save_toy_model(os.path.join(out, "model"))
    runs = [toy_target_distance(model_dir, os.path.join(out, f"run_g{g}"), group=g, steps=steps) for g in groups]
    objectives = toy_objectives.toy_objective_runs(model_dir, os.path.join(out, "objectives"), args.quick)
    record = {"settings": settings, "runs": runs, "objectives": objectives, "seconds": time.time() - start}
    return save_stage(args, "toy", record)


def run_experiment(args, command: str) -> dict[str, float]:
    """Every stage of `args.stages` (the options of `trl-powerflow experiment`, see `trl_powerflow.cli.experiment`),
    `args.jobs` jobs at a time (`small_scale.run_jobs`), then the report (tables, plots, results.json) in
    `args.output_dir`/report and, with `args.docs_dir`, there (not with `args.no_report`). Returns the seconds of
    each stage of this invocation (summed over its jobs)."""
    from .small_scale import STAGES, experiment_jobs, reasoning_data, run_jobs

    os.makedirs(args.output_dir, exist_ok=True)
    stages = [s for s in STAGES if s in args.stages]
    if {"seeds", "learning_rate", "sweep", "ablations", "diagnosis", "power_sampling"} & set(stages):
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
