r"""The small-scale experiment of docs/experiment: pretrain the tiny bases, compare every method, write the results
(`trl-powerflow experiment`, `run_experiment(args, command)`).

1. Reasoning: `trl-powerflow pretrain-base --task reasoning` pretrains a tiny Qwen2 on noisy worked solutions of the
   digit-chain task (`trl_powerflow.experiments.synthetic_tasks`); `trl-powerflow compare` then trains base /
   supervised GRPO / Intuitor / entropy minimisation / TTRL / EMPO / PowerFlow (alpha 4 and 0.5, -traj and -token
   ablations) from it with one shared recipe and budget, and evaluates every checkpoint on held-out problems.
2. Creative: `--task creative` pretrains a diverse base on rhyming couplets and an over-sharpened "aligned" model
   from it; `compare` starts every method from the aligned model (PowerFlow alpha 0.5 and 2, GRPO with the
   poem-quality reward, Intuitor, entropy minimisation) and also evaluates the pre-alignment base as a reference.
3. Copies each comparison's results.md / results.json / plots to `docs_dir`/{reasoning,creative}/ and writes
   `docs_dir`/results.md with both tables, the base models' statistics, the command and the wall times.

Each stage runs as a subprocess (`python -m trl_powerflow <command>`). Every stage is seeded; finished stages are
reused on a re-run (`force` redoes them). `quick` shrinks every stage to a smoke run (minutes).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from .compare import default_recipe

# Shared by every method of a task (on top of scripts/recipes/tiny_cpu.yaml): 8 prompts x 8 completions per step,
# sampling at temperature 1, one learning rate for all (no per-method tuning), constant schedule.
REASONING_TRAIN_ARGS = (
    "--per_device_train_batch_size 64 --num_generations 8 --max_completion_length 48 --learning_rate 1e-4"
)
CREATIVE_TRAIN_ARGS = (
    "--per_device_train_batch_size 64 --num_generations 8 --max_completion_length 32 --learning_rate 1e-4"
)


def run(argv: list[str], log_path: str) -> float:
    """Run `trl-powerflow <argv>` as a subprocess (output to `log_path`, progress lines echoed), return its wall
    time."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, "-m", "trl_powerflow", *argv]
    print("$ " + shlex.join(command), flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        for line in process.stdout:
            log.write(line)
            if line.startswith(("[pretrain]", "[compare]")):
                print("  " + line.rstrip(), flush=True)
        code = process.wait()
    if code != 0:
        raise SystemExit(f"{shlex.join(command)} failed with exit code {code}; see {log_path}")
    return time.time() - start


def pretrain_argv(args, task: str, out: str) -> list[str]:
    argv = [
        "pretrain-base",
        "--task",
        task,
        "--output_dir",
        out,
        "--seed",
        str(args.seed),
    ]
    if args.quick:  # defaults otherwise: see trl-powerflow pretrain-base (128 hidden, 2 layers; 1000 / 500+100 steps)
        argv += ["--steps", "20", "--aligned_steps", "5", "--eval_samples", "2"]
        argv += ["--num_train_prompts", "16", "--num_eval_prompts", "4"] if task == "reasoning" else []
    elif task == "creative":
        argv += ["--eval_samples", "16"]
    return argv + (["--force"] if args.force else [])


def compare_argv(args, task: str, data: str, out: str) -> list[str]:
    common = [
        "compare",
        "--output_dir", out,
        "--config", os.path.relpath(default_recipe()),
        "--dataset_name", os.path.join(data, "train.jsonl"),
        "--eval_dataset", os.path.join(data, "eval.jsonl"),
        "--seed", str(args.seed),
    ]  # fmt: skip
    if task == "reasoning":
        steps = 2 if args.quick else args.reasoning_steps
        argv = common + [
            "--title", "Digit-chain reasoning (tiny Qwen2 base)",
            "--model_name_or_path", os.path.join(data, "base"),
            "--max_steps", str(steps),
            "--num_samples", "8",
            "--max_new_tokens", "48",
            "--embedder", "none",
            "--task_metrics", "trl_powerflow.experiments.synthetic_tasks:chain_metrics",
            "--diversity_metric", "distinct_answer_fraction",
            "--alpha_high", "4", "--alpha_low", "0.5",
            "--train_args", REASONING_TRAIN_ARGS,
        ]  # fmt: skip
        if args.quick:
            argv += ["--methods", "base", "grpo_accuracy", "powerflow", "--eval_max_prompts", "4"]
    else:
        steps = 2 if args.quick else args.creative_steps
        quality_reward = "trl_powerflow.experiments.synthetic_tasks:poem_quality_reward"
        argv = common + [
            "--title", "Rhyming couplets (tiny over-sharpened 'aligned' model)",
            "--model_name_or_path", os.path.join(data, "aligned"),
            "--max_steps", str(steps),
            "--num_samples", "16",
            "--max_new_tokens", "32",
            "--task_metrics", "trl_powerflow.experiments.synthetic_tasks:poem_metrics",
            "--quality_metric", "quality",
            "--diversity_metric", "distinct_poems",
            "--alpha_high", "2", "--alpha_low", "0.5",
            "--method", f"pre_alignment_base=none --model_name_or_path {os.path.join(data, 'base')}",
            "--method", f"grpo_quality=grpo --reward_funcs {quality_reward}",
            "--train_args", CREATIVE_TRAIN_ARGS,
        ]  # fmt: skip
        methods = ["base", "pre_alignment_base", "grpo_quality", "intuitor", "entropy_min", "powerflow_low_alpha"]
        methods += [] if args.quick else ["powerflow"]
        argv += ["--methods", *(methods[:3] + methods[-1:] if args.quick else methods)]
        if args.quick:
            argv += ["--embedder", "none", "--num_samples", "2"]
    argv += ["--eval_every", str(1 if args.quick else args.eval_every)]
    return argv + (["--force"] if args.force else [])


CHECK_KEYS = {
    "reasoning": ("avg@k", "pass@k", "maj@k", "mean_completion_tokens", "guess_fraction", "guess_accuracy",
                  "worked_accuracy", "step_error_rate"),
    "creative": ("quality", "rhyme_fraction", "topic_fraction", "distinct_poems", "distinct_valid_poems",
                 "mean_completion_tokens"),
}  # fmt: skip


def recorded_seconds(args) -> dict[str, float]:
    """Time each stage took when it actually ran (a re-run that reuses finished stages keeps their times)."""
    seconds = {}
    for task in args.tasks:
        data = os.path.join(args.output_dir, task)
        with open(os.path.join(data, "pretrain.json")) as f:
            seconds[f"{task} pretraining"] = json.load(f)["total_seconds"]
        with open(os.path.join(data, "compare", "results.json")) as f:
            seconds[f"{task} comparison"] = json.load(f)["info"]["compute_seconds"]
    return seconds


def summary(args, command: str) -> str:
    lines = ["# Small-scale experiment: results", ""]
    lines += ["Regenerate everything (pretraining, all runs, tables, plots) with:", "", "```bash", command, "```", ""]
    seconds = recorded_seconds(args)
    lines.append(
        "Time per stage: "
        + ", ".join(f"{name} {value / 60:.1f} min" for name, value in seconds.items())
        + f"; total {sum(seconds.values()) / 60:.1f} min (2-core CPU, OMP_NUM_THREADS=1, shared with other jobs; "
        "process start-up and plotting not included)."
    )
    for task in args.tasks:
        data = os.path.join(args.output_dir, task)
        with open(os.path.join(data, "pretrain.json")) as f:
            pretrain = json.load(f)
        lines += ["", f"## {task}: starting models", ""]
        steps = pretrain["losses"][-1]["step"]
        aligned = f", then {pretrain['aligned_losses'][-1]['step']} steps for `aligned`" if task == "creative" else ""
        lines.append(
            f"Tiny Qwen2, {pretrain['parameters']:,} parameters, pretrained for {steps} steps of "
            f"{pretrain['settings']['batch_size']} sequences{aligned} ({pretrain['total_seconds'] / 60:.1f} min)."
        )
        for name, check in pretrain.get("check", {}).items():
            metrics = check["metrics"]
            keys = [key.replace("@k", f"@{metrics['num_samples']}") for key in CHECK_KEYS[task]]
            shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if metrics.get(k) is not None)
            lines.append(f"- `{name}` ({metrics['num_prompts']} prompts x {metrics['num_samples']} samples): {shown}")
        with open(os.path.join(data, "compare", "results.md")) as f:
            body = f.read().split("\n", 1)[1]  # drop the title line
        lines += ["", f"### {task}: comparison", body.replace("\n## ", "\n#### ")]
        lines += ["", f"Plots: `{task}/accuracy_vs_step.png`, `{task}/length_vs_step.png`, "
                  f"`{task}/quality_vs_diversity.png`."]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_experiment(args, command: str) -> dict[str, float]:
    """Every stage of `args` (the options of `trl-powerflow experiment`, see `trl_powerflow.cli.experiment`); with
    `args.docs_dir` the tables and plots are copied there and `results.md` is written with `command` as the way to
    regenerate them. Returns the wall time of each stage of this invocation."""
    os.makedirs(args.output_dir, exist_ok=True)
    timings = {}
    for task in args.tasks:
        data = os.path.join(args.output_dir, task)
        os.makedirs(data, exist_ok=True)
        timings[f"{task} pretraining"] = run(pretrain_argv(args, task, data), os.path.join(data, "pretrain.log"))
        out = os.path.join(data, "compare")
        timings[f"{task} comparison"] = run(compare_argv(args, task, data, out), os.path.join(data, "compare.log"))
    if args.docs_dir:
        for task in args.tasks:
            source = os.path.join(args.output_dir, task, "compare")
            target = os.path.join(args.docs_dir, task)
            os.makedirs(target, exist_ok=True)
            for name in ("results.md", "results.json", "accuracy_vs_step.png", "length_vs_step.png",
                         "quality_vs_diversity.png"):  # fmt: skip
                shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
            shutil.copyfile(
                os.path.join(args.output_dir, task, "pretrain.json"), os.path.join(target, "pretrain.json")
            )
        with open(os.path.join(args.docs_dir, "results.md"), "w") as f:
            f.write(summary(args, command))
        print(f"[experiment] wrote {args.docs_dir}/results.md")
    print(f"[experiment] done in {sum(timings.values()) / 60:.1f} min (this invocation): " + json.dumps(timings))
    return timings
