r"""The small-scale experiment of docs/experiment: its runs (`trl-powerflow experiment`; the stages and the report
are run by `evidence.run_experiment(args, command)`).

Stages (`--stages`, default all; each reuses what a previous invocation finished, `force` redoes it):

- ``seeds``: reasoning (digit chains, `trl_powerflow.experiments.synthetic_tasks`), starting from the shipped
  pretrained base `trl_powerflow/assets/digit_chain_base` (the same for every seed). For every seed in `seeds`
  one `trl-powerflow compare` trains supervised GRPO (accuracy reward), the RLIF baselines TTRL (majority vote),
  EMPO (semantic entropy) and Intuitor (self-certainty), and PowerFlow alpha 4 with the trainer's defaults
  (learned head, log_z_recentre on, log_z_learning_rate unset) under each objective: LA-TB (the default),
  la_tb_exact and token_balance, for 2N steps at a constant learning rate and evaluates
  every N/2 steps: the checkpoints at N and 2N give both budgets. The seed changes the RL run and the evaluation
  sampling (the base is evaluated with each seed too).
- ``learning_rate``: supervised GRPO and PowerFlow (the defaults) for N steps at `LEARNING_RATE_HIGH`, 3x the
  shared recipe's, one `compare` per seed in `seeds`: with the ``seeds`` runs at the recipe's rate, the share of
  GRPO's gain at a shared higher rate and with each method at the better of the two rates.
- ``sweep``: PowerFlow alpha 2, 8 on reasoning for N steps at `seed` (alpha 4 and TTRL, its alpha -> infinity
  limit, are read from the seed-`seed` run of ``seeds`` at step N; alpha 1 is the base: an exact fixed point).
- ``ablations``: the remaining reasoning methods at N/2 steps and `seed`: entropy minimisation, PowerFlow alpha 0.5
  and the -traj / -token ablations.
- ``creative``: `trl-powerflow pretrain-base --task creative` (diverse base, then an over-sharpened "aligned" model)
  and a comparison from the aligned model: PowerFlow alpha 0.25, 0.5 and 0.75, GRPO with the poem-quality
  reward, Intuitor, entropy minimisation (alpha 2 too when it is in `creative_alphas`); the pre-alignment base is
  evaluated as a reference.
- ``diagnosis``, ``power_sampling``, ``toy``: `trl_powerflow.experiments.evidence` (where PowerFlow's probability
  mass goes against GRPO's; power sampling of the base at matched forward passes; the live target-distance
  estimate against the exact KL on the enumerable toy).

The report (`evidence_report.write_report`): tables with 95% t-intervals over seeds, the share of GRPO's gain
recovered by PowerFlow with its delta-method interval, the plots, the machine and the wall time per stage; with
`args.docs_dir` it is written there (results.md, results.json, *.png and each comparison's own results under
comparisons/).

Each training stage runs as a subprocess (`python -m trl_powerflow <command>`); `run_jobs` runs `args.jobs` of
them side by side (every seed is its own job; diagnosis waits for the seeds). `quick` shrinks every stage to a
smoke run that produces every table and plot (CI, about two minutes on one thread).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

from .compare import default_recipe

# Shared by every method of a task: 8 prompts x 8 completions per step, sampling at temperature 1, one learning rate
# for all (no per-method tuning), constant schedule (the recipe's).
REASONING_TRAIN_ARGS = (
    "--per_device_train_batch_size 64 --num_generations 8 --max_completion_length 48 --learning_rate 1e-4"
)
CREATIVE_TRAIN_ARGS = (
    "--per_device_train_batch_size 64 --num_generations 8 --max_completion_length 32 --learning_rate 1e-4"
)
QUICK_REASONING_TRAIN_ARGS = (
    "--per_device_train_batch_size 8 --num_generations 4 --max_completion_length 24 --learning_rate 1e-4"
)
QUICK_CREATIVE_TRAIN_ARGS = (
    "--per_device_train_batch_size 8 --num_generations 4 --max_completion_length 24 --learning_rate 1e-4"
)
RECIPE_LEARNING_RATE = 1e-4  # the `--learning_rate` of the train args above
# Stage learning_rate: 3x the recipe's. Picked from single-seed probes at 3e-4 and 6e-4 (seed 0, 100 steps: PowerFlow
# avg@8 0.832 and 0.553, GRPO 0.889 at 3e-4): both methods are stable at 3e-4; PowerFlow falls apart at 6e-4.
LEARNING_RATE_HIGH = 3e-4
LR_METHODS = ("base", "grpo_accuracy", "powerflow")
# Run order: the multi-seed comparison, then the cheap stages that read it, then the single-seed ones.
STAGES = ("seeds", "learning_rate", "diagnosis", "power_sampling", "toy", "sweep", "creative", "ablations")
# The multi-seed comparison: supervised GRPO, the RLIF baselines (TTRL, EMPO, Intuitor) and PowerFlow alpha 4 with
# each of its objectives: LA-TB (the default), the exact-length variant and the token-level balance.
SEED_METHODS = (
    "base", "grpo_accuracy", "ttrl", "empo", "intuitor", "powerflow", "powerflow_la_tb_exact",
    "powerflow_token_balance",
)  # fmt: skip
DIAGNOSIS_METHODS = ("base", "grpo_accuracy", "ttrl", "powerflow")
ABLATION_METHODS = ("base", "entropy_min", "powerflow_low_alpha", "powerflow_tb_traj", "powerflow_tb_token")
REASONING_TITLE = "Digit-chain reasoning (shipped tiny Qwen2 base)"


def run(argv: list[str], log_path: str, tag: str = "") -> float:
    """Run `trl-powerflow <argv>` as a subprocess (output to `log_path`, progress lines echoed with `tag`), return its
    wall time."""
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
            if line.startswith(("[pretrain]", "[compare]", "[experiment]")):
                print(f"  {tag}{line.rstrip()}", flush=True)
        code = process.wait()
    if code != 0:
        raise SystemExit(f"{shlex.join(command)} failed with exit code {code}; see {log_path}")
    return time.time() - start


def half_budget(args) -> int:
    return 2 if args.quick else args.reasoning_steps


def write_recipe(output_dir: str) -> str:
    """The shared recipe: scripts/recipes/tiny_cpu.yaml without its `log_z_learning_rate` (so PowerFlow runs with
    the trainer's defaults: learned head, log_z_recentre on, head learning rate = learning_rate)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "recipe.yaml")
    with open(default_recipe()) as f:
        lines = [line for line in f if not line.startswith("log_z_learning_rate:")]
    text = "# scripts/recipes/tiny_cpu.yaml without log_z_learning_rate (trainer defaults for the head)\n"
    text += "".join(line for line in lines if not line.startswith("#"))
    if not os.path.isfile(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return os.path.relpath(path)


def reasoning_data(args) -> str:
    """Training / held-out prompt files of the shipped digit-chain base (kept out of its pretraining corpus) and its
    pretrain.json; returns the data directory."""
    from .demo import DIGIT_CHAIN_BASE, digit_chain_base_path, digit_chain_splits

    data = os.path.join(args.output_dir, "reasoning")
    os.makedirs(data, exist_ok=True)
    digit_chain_base_path()
    train_rows, eval_rows = digit_chain_splits(*((32, 4) if args.quick else (256, 64)))
    for name, rows in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows)):
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path = os.path.join(data, name)
        if not os.path.isfile(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
    with open(os.path.join(DIGIT_CHAIN_BASE, "pretrain.json")) as f:
        text = json.dumps(json.load(f), indent=2)
    path = os.path.join(data, "pretrain.json")
    if not os.path.isfile(path) or open(path).read() != text:  # parallel stage workers read, never rewrite
        with open(path, "w") as f:
            f.write(text)
    return data


def base_model_path() -> str:
    from .demo import DIGIT_CHAIN_BASE

    return os.path.relpath(DIGIT_CHAIN_BASE)


def compare_argv(args, task: str, out: str, seed: int, title: str) -> list[str]:
    """The start of a `trl-powerflow compare` command on the task's data (`<output_dir>/<task>/{train,eval}.jsonl`)
    with the experiment's recipe."""
    data = os.path.join(args.output_dir, task)
    return [
        "compare",
        "--output_dir", out,
        "--config", write_recipe(args.output_dir),
        "--dataset_name", os.path.join(data, "train.jsonl"),
        "--eval_dataset", os.path.join(data, "eval.jsonl"),
        "--seed", str(seed),
        "--title", title,
    ]  # fmt: skip


def reasoning_train_args(args, learning_rate: float = RECIPE_LEARNING_RATE) -> str:
    """The reasoning train args (quick: the smoke ones) at `learning_rate`."""
    text = QUICK_REASONING_TRAIN_ARGS if args.quick else REASONING_TRAIN_ARGS
    if learning_rate == RECIPE_LEARNING_RATE:
        return text
    words = text.split()
    at = words.index("--learning_rate") + 1
    assert float(words[at]) == RECIPE_LEARNING_RATE, text
    return " ".join(words[:at] + [f"{learning_rate:g}"] + words[at + 1 :])


def reasoning_argv(
    args, out: str, seed: int, steps: int, eval_every: int, methods, extra=(), learning_rate=RECIPE_LEARNING_RATE
):
    argv = [
        *compare_argv(args, "reasoning", out, seed, REASONING_TITLE),
        "--model_name_or_path", base_model_path(),
        "--max_steps", str(steps),
        "--num_samples", "8",
        "--max_new_tokens", "48",
        "--embedder", "none",
        "--task_metrics", "trl_powerflow.experiments.synthetic_tasks:chain_metrics",
        "--diversity_metric", "distinct_answer_fraction",
        "--alpha_high", "4", "--alpha_low", "0.5",
        "--train_args", reasoning_train_args(args, learning_rate),
        *extra,
        "--methods", *methods,
        "--eval_every", str(eval_every),
    ]  # fmt: skip
    if args.quick:
        argv += ["--in_process", "--eval_batch_size", "4"]
    return argv + (["--force"] if args.force else [])


def eval_interval(args) -> int:
    """Evaluate every N/2 steps (quick: every N), so that both budgets, N and 2N, are evaluated."""
    n = half_budget(args)
    return n if args.quick else max(1, n // 2)


def seed_dir(args, seed: int) -> str:
    return os.path.join(args.output_dir, "reasoning", "seeds", f"seed{seed}")


def seeds_argvs(args) -> list[tuple[str, list[str]]]:
    n = half_budget(args)
    every = eval_interval(args)
    return [(seed_dir(args, s), reasoning_argv(args, seed_dir(args, s), s, 2 * n, every, SEED_METHODS))
            for s in args.seeds]  # fmt: skip


def lr_dir(args, seed: int) -> str:
    return os.path.join(args.output_dir, "reasoning", "learning_rate", f"seed{seed}")


def lr_argvs(args) -> list[tuple[str, list[str]]]:
    """Stage learning_rate: GRPO and PowerFlow at `LEARNING_RATE_HIGH` for N steps, one comparison per seed."""
    n = half_budget(args)
    return [(lr_dir(args, s), reasoning_argv(args, lr_dir(args, s), s, n, eval_interval(args), LR_METHODS,
                                             learning_rate=LEARNING_RATE_HIGH)) for s in args.seeds]  # fmt: skip


def alpha_name(alpha: float) -> str:
    return f"powerflow_alpha{alpha:g}"


def sweep_argv(args) -> tuple[str, list[str]]:
    out = os.path.join(args.output_dir, "reasoning", "alpha_sweep")
    extra = []
    for alpha in args.alphas:
        extra += ["--method", f"{alpha_name(alpha)}=powerflow --alpha {alpha:g} --objective la_tb"]
    n = half_budget(args)
    methods = ["base", *(alpha_name(a) for a in args.alphas)]
    return out, reasoning_argv(args, out, args.seed, n, eval_interval(args), methods, extra)


def ablations_argv(args) -> tuple[str, list[str]]:
    out = os.path.join(args.output_dir, "reasoning", "compare")
    methods = ABLATION_METHODS[:2] if args.quick else ABLATION_METHODS
    n = max(1, half_budget(args) // 2)  # N/2 steps: every ablation has collapsed by then; keeps the command ~90 min
    return out, reasoning_argv(args, out, args.seed, n, 1 if args.quick else max(1, n // 2), methods)


def pretrain_argv(args, task: str, out: str) -> list[str]:
    argv = ["pretrain-base", "--task", task, "--output_dir", out, "--seed", str(args.seed)]
    if args.quick:  # defaults otherwise: see trl-powerflow pretrain-base (128 hidden, 2 layers; 500+100 steps)
        argv += ["--steps", "20", "--aligned_steps", "5", "--eval_samples", "2"]
    elif task == "creative":
        argv += ["--eval_samples", "16"]
    return argv + (["--force"] if args.force else [])


def creative_argv(args) -> tuple[str, list[str]]:
    data = os.path.join(args.output_dir, "creative")
    out = os.path.join(data, "compare")
    steps = 2 if args.quick else args.creative_steps
    quality_reward = "trl_powerflow.experiments.synthetic_tasks:poem_quality_reward"
    argv = [
        *compare_argv(args, "creative", out, args.seed, "Rhyming couplets (tiny over-sharpened 'aligned' model)"),
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
        "--train_args", QUICK_CREATIVE_TRAIN_ARGS if args.quick else CREATIVE_TRAIN_ARGS,
    ]  # fmt: skip
    flows = []
    for alpha in args.creative_alphas:
        if alpha == 0.5:
            flows.append("powerflow_low_alpha")
        elif alpha == 2:
            flows.append("powerflow")
        else:
            argv += ["--method", f"{alpha_name(alpha)}=powerflow --alpha {alpha:g} --objective la_tb"]
            flows.append(alpha_name(alpha))
    methods = ["base", "pre_alignment_base", "grpo_quality", "intuitor", "entropy_min", *flows]
    if args.quick:
        methods = ["base", "pre_alignment_base", "grpo_quality", *flows[:2]]
        argv += ["--embedder", "none", "--num_samples", "4", "--in_process", "--eval_every", "1"]
    else:
        argv += ["--eval_every", str(args.eval_every)]
    argv += ["--methods", *dict.fromkeys(methods)]
    return out, argv + (["--force"] if args.force else [])


def compare_seconds(out: str) -> float:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["info"]["compute_seconds"]


# ------------------------------------------------------------------------------------------------ running the stages
IN_PROCESS_STAGES = ("diagnosis", "power_sampling", "toy")


@dataclasses.dataclass
class Job:
    """One schedulable piece of a stage: `commands` ((trl-powerflow argv, log path), run in order) or, for an
    in-process stage with one worker, `local` (called in this process). `cost` orders the start (largest first);
    the job starts only once every job of the stages in `after` has finished."""

    stage: str
    name: str
    commands: list = dataclasses.field(default_factory=list)
    local: object = None
    cost: float = 1.0
    after: tuple = ()


def stage_argv(args, stage: str) -> list[str]:
    """`trl-powerflow experiment` running `stage` alone with `args`' settings, one worker and no report."""
    argv = [
        "experiment", "--output_dir", args.output_dir, "--stages", stage, "--jobs", "1", "--no_report",
        "--reasoning_steps", str(args.reasoning_steps), "--creative_steps", str(args.creative_steps),
        "--eval_every", str(args.eval_every), "--seed", str(args.seed), "--seeds", *map(str, args.seeds),
        "--alphas", *(f"{a:g}" for a in args.alphas), "--creative_alphas", *(f"{a:g}" for a in args.creative_alphas),
    ]  # fmt: skip
    return argv + ["--quick"] * args.quick + ["--force"] * args.force


def experiment_jobs(args, stages, in_process: dict) -> list[Job]:
    """The jobs of `stages`: one per seed, one per other training stage (creative: pretraining then comparison),
    one per in-process stage (`in_process[stage]`, a callable, with one worker; a `trl-powerflow experiment
    --stages <stage>` subprocess with several). Costs are the relative compute of the full run."""
    jobs = []
    for stage in stages:
        if stage in ("seeds", "learning_rate"):  # one comparison per seed
            argvs, prefix, cost = (seeds_argvs(args), "", 20) if stage == "seeds" else (lr_argvs(args), "lr_", 5)
            for out, argv in argvs:
                os.makedirs(out, exist_ok=True)
                name = prefix + os.path.basename(out)
                jobs.append(Job(stage, name, [(argv, os.path.join(out, "compare.log"))], cost=cost))
        elif stage in ("sweep", "ablations"):
            out, argv = sweep_argv(args) if stage == "sweep" else ablations_argv(args)
            os.makedirs(out, exist_ok=True)
            jobs.append(Job(stage, stage, [(argv, os.path.join(out, "compare.log"))], cost=6))
        elif stage == "creative":
            data = os.path.join(args.output_dir, "creative")
            os.makedirs(data, exist_ok=True)
            commands = [(pretrain_argv(args, "creative", data), os.path.join(data, "pretrain.log")),
                        (creative_argv(args)[1], os.path.join(data, "compare.log"))]  # fmt: skip
            jobs.append(Job(stage, stage, commands, cost=10))
        elif stage in IN_PROCESS_STAGES:
            after = ("seeds",) if stage == "diagnosis" else ()
            if args.jobs == 1:
                jobs.append(Job(stage, stage, local=in_process[stage], cost=2, after=after))
            else:
                log = os.path.join(args.output_dir, f"{stage}.log")
                jobs.append(Job(stage, stage, [(stage_argv(args, stage), log)], cost=2, after=after))
    return jobs


def run_jobs(jobs: list[Job], workers: int) -> dict[str, float]:
    """Run `jobs` with at most `workers` at a time (largest cost first, dependencies respected); returns the
    seconds per stage (summed over its jobs). The first failure stops new starts and is raised once the running
    jobs end."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    def execute(job: Job) -> float:
        start = time.time()
        print(f"[experiment] start {job.name}", flush=True)
        if job.local is not None:
            job.local()
        for argv, log in job.commands:
            run(argv, log, tag=f"[{job.name}] " if workers > 1 else "")
        print(f"[experiment] done {job.name}: {time.time() - start:.0f}s", flush=True)
        return time.time() - start

    pending = sorted(jobs, key=lambda j: -j.cost)
    running, seconds, error = {}, {}, None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        while pending or running:
            busy = {j.stage for j in pending} | {j.stage for j in running.values()}
            for job in list(pending):
                if error is None and len(running) < workers and not set(job.after) & busy - {job.stage}:
                    pending.remove(job)
                    running[pool.submit(execute, job)] = job
            if error is not None and not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    seconds[job.stage] = seconds.get(job.stage, 0.0) + future.result()
                except BaseException as e:  # noqa: BLE001 - re-raised below, after the running jobs end
                    error = error or e
    if error is not None:
        raise error
    return seconds
