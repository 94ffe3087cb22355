"""Micro-benchmark of the training forward + loss + backward alone, PowerFlow vs GRPO, on one fixed batch.

`step_cost` times whole optimizer steps, where generation dominates on small models and per-step noise is a few
percent. This script isolates the part of the step where PowerFlow's code differs from GRPO's (the loss forward with
the head and the TB loss and metrics, and its backward), in one process, on the *same* completions for every arm,
interleaved call by call with a rotated order, many repetitions. Arms:

  pf_head     PowerFlow as configured by default (learned head, gradient into the trunk)
  pf_detach   PowerFlow with `log_z_detach_features=True` (head trained on detached prompt features)
  pf_group    PowerFlow with `log_z_estimator='group'` (no head; log Z given with the batch)
  grpo_beta   GRPO loss with beta = 0.04 (reads the reference log-probs, adds the KL term)
  grpo_beta0  GRPO loss with beta = 0

    python -m benchmarks.loss_cost           # models s and m, 60 repetitions (about 2 min)
    python -m benchmarks.loss_cost --quick   # CI smoke run
"""

import gc
import os
import sys
import tempfile
import time

from benchmarks import _arms, _bench, _report
from benchmarks._report import fmt, median, ratio_summary

ARMS = {
    "pf_head": ("powerflow", {}),
    "pf_detach": ("powerflow", {"log_z_detach_features": True}),
    "pf_group": ("powerflow", {"log_z_estimator": "group"}),
    "grpo_beta": ("grpo", {"beta": 0.04}),
    "grpo_beta0": ("grpo", {"beta": 0.0}),
}
CONFIGS = {
    "model=s": {"model": "s", "completion_length": 64, "num_generations": 8, "prompts_per_step": 2},
    "model=m": {"model": "m", "completion_length": 64, "num_generations": 8, "prompts_per_step": 2},
    "L=256": {"model": "s", "completion_length": 256, "num_generations": 8, "prompts_per_step": 2},
    "quick": {"model": "xs", "completion_length": 8, "num_generations": 2, "prompts_per_step": 2},
}


def build(kind, extra, spec, work_dir, dataset):
    from trl import GRPOConfig, GRPOTrainer

    from trl_powerflow import PowerFlowConfig, PowerFlowTrainer

    args = _arms.common_args(spec, os.path.join(work_dir, "out"))
    args.update(extra)
    if kind == "grpo":
        trainer = GRPOTrainer(
            model=spec["model_dir"], reward_funcs=[_arms.cheap_reward], args=GRPOConfig(**args), train_dataset=dataset
        )
    else:
        trainer = PowerFlowTrainer(model=spec["model_dir"], args=PowerFlowConfig(**args), train_dataset=dataset)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.create_optimizer()
    return trainer


def run_config(cfg, reps, warmup, cache_dir, work_dir):
    import torch

    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    model_dir = _arms.model_dir_for(cfg["model"], cache_dir)
    spec = {**cfg, "model_dir": model_dir, "warmup": 0, "steps": 1, "arm": "loss"}
    dataset = tiny_prompt_dataset(16)
    trainers = {name: build(kind, extra, spec, work_dir, dataset) for name, (kind, extra) in ARMS.items()}
    batch_size = cfg["prompts_per_step"] * cfg["num_generations"]
    inputs = [dataset[i // cfg["num_generations"]] for i in range(batch_size)]
    torch.manual_seed(0)
    batches = {name: t._generate_and_score_completions(inputs) for name, t in trainers.items()}
    shared = batches["pf_head"]
    for name, b in batches.items():  # every arm scores the same completions
        for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
            if b[key].shape != shared[key].shape:
                raise RuntimeError(f"{name}: batch shapes differ; completions must have the forced length")
            b[key] = shared[key]
        if "ref_per_token_logps" in b:
            b["ref_per_token_logps"] = shared["base_per_token_logps"]
        if "base_per_token_logps" in b:
            b["base_per_token_logps"] = shared["base_per_token_logps"]
    for t in trainers.values():
        if getattr(t, "log_z_head", None) is not None:
            t.log_z_head.shift(0.0)  # the first-batch initialisation of log Z' is not part of the steady state

    names = list(trainers)
    times = {n: [] for n in names}
    cpu = {n: [] for n in names}
    gc.collect()
    gc.freeze()
    for r in range(warmup + reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t = trainers[name]
            gc.disable()
            c0 = time.thread_time()
            t0 = time.perf_counter()
            loss = t._compute_loss(t.model, batches[name])
            t.accelerator.backward(loss)
            elapsed = time.perf_counter() - t0
            cpu_elapsed = time.thread_time() - c0
            gc.enable()
            t.model.zero_grad(set_to_none=True)
            if r >= warmup:
                times[name].append(elapsed)
                cpu[name].append(cpu_elapsed)
    gc.unfreeze()
    # CPU time of this (only computing) thread is the primary measure: with one intra-op thread every op and the
    # CPU autograd engine run on it, and other processes on a shared machine barely change it. Wall time is kept too.
    out = {"arms": {}, "ratios_to_grpo_beta": {}, "ratios_to_grpo_beta0": {}, "wall_ratios_to_grpo_beta": {}}
    for n in names:
        out["arms"][n] = {
            "median_ms": 1000 * median(cpu[n]),
            "median_wall_ms": 1000 * median(times[n]),
            "times_s": cpu[n],
            "wall_times_s": times[n],
        }
        out["ratios_to_grpo_beta"][n] = ratio_summary(cpu[n], cpu["grpo_beta"])
        out["ratios_to_grpo_beta0"][n] = ratio_summary(cpu[n], cpu["grpo_beta0"])
        out["wall_ratios_to_grpo_beta"][n] = ratio_summary(times[n], times["grpo_beta"])
    diffs = [a - b for a, b in zip(cpu["pf_head"], cpu["pf_group"])]
    out["head_cost_ms"] = {
        "median": 1000 * median(diffs),
        "ci95": [1000 * x for x in _report.bootstrap_median_ci(diffs)],
    }
    return out


def markdown(result):
    lines = [
        "## Loss forward + backward alone (same batch, one process)",
        "",
        f"Command: `{result['meta']['command']}`",
        "",
        f"{result['meta']['reps']} interleaved repetitions per arm (after {result['meta']['warmup']} warm-up), "
        "batch = 2 prompts x 8 completions of 64 tokens. Times are CPU time of the computing thread (wall time in "
        "the last column); ratios: median of per-repetition ratios [bootstrap 95% CI].",
        "",
        "| config | arm | CPU ms | / GRPO beta>0 | / GRPO beta=0 | wall ms, wall / GRPO beta>0 |",
        "|---|---|---|---|---|---|",
    ]
    for cname, c in result["configs"].items():
        for arm, a in c["arms"].items():
            r, r0 = c["ratios_to_grpo_beta"][arm], c["ratios_to_grpo_beta0"][arm]
            lines.append(
                f"| {cname} | {arm} | {fmt(a['median_ms'], 2)} | {fmt(r['median'])} [{fmt(r['ci95'][0])}, "
                f"{fmt(r['ci95'][1])}] | {fmt(r0['median'])} [{fmt(r0['ci95'][0])}, {fmt(r0['ci95'][1])}] "
                f"| {fmt(a['median_wall_ms'], 2)}, {fmt(c['wall_ratios_to_grpo_beta'][arm]['median'])} |"
            )
        h = c["head_cost_ms"]
        lines.append(
            f"| {cname} | head cost (pf_head - pf_group) | {fmt(h['median'], 2)} "
            f"[{fmt(h['ci95'][0], 2)}, {fmt(h['ci95'][1], 2)}] | | | |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = _report.parser(__doc__, quick_help="CI smoke run: model xs, 3 repetitions")
    parser.add_argument("--configs", nargs="*", default=None, help=f"of {list(CONFIGS)}")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args(argv)
    _bench.set_single_thread()
    reps = args.reps or (3 if args.quick else 60)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    configs = args.configs or (["quick"] if args.quick else ["model=s", "model=m"])
    out_dir = _report.output_dir(args.out, "loss_cost", temp=args.quick)
    work_dir = tempfile.mkdtemp(prefix="loss_cost_work_")
    result = {
        "meta": {
            "command": _report.command_line("loss_cost", argv),
            "machine": _report.machine_info(),
            "reps": reps,
            "warmup": warmup,
            "arms": {k: v[1] for k, v in ARMS.items()},
        },
        "configs": {},
    }
    for cname in configs:
        t0 = time.perf_counter()
        result["configs"][cname] = {
            "config": CONFIGS[cname],
            **run_config(CONFIGS[cname], reps, warmup, _arms.default_cache_dir(), work_dir),
        }
        print(f"  {cname}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    _report.write_results(out_dir, "loss_cost", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
