r"""The same-harness comparison: base / supervised GRPO / RLIF baselines / PowerFlow, trained and evaluated alike.

Every method trains the same starting model on the same prompts with the same recipe (generation settings, batch,
learning rate, seed and step budget) through `trl-powerflow train`; only the trainer and its reward (or alpha /
objective) differ. Every `eval_every` steps a checkpoint is saved and evaluated by sampling with
`trl_powerflow.evaluation.evaluate_model` (same prompts, samples, temperature and seed for every method).
`run_comparison(args, command)` runs it (`args`: the options of `trl-powerflow compare`, see
`trl_powerflow.cli.compare`) and writes, in `args.output_dir`:

    results.json              every evaluation (method x step), settings, train times and training logs
    results.md                the final table, the per-step table and the command that produced them
    accuracy_vs_step.png      quality (avg@k, or --quality_metric) against the training step
    length_vs_step.png        mean completion length against the step (evaluation samples and training batches)
    quality_vs_diversity.png  quality against diversity (--diversity_metric) of the final models
    runs/<method>/            checkpoints, train.log and per-method results (reused on a re-run; --force redoes)

The methods are `builtin_methods` plus any `--method NAME="TRAINER FLAGS..."` (`resolve_methods`).
The tables and plots are written by `compare_report.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .compare_report import default_diversity_metric, default_quality_metric, markdown, plot

# The source checkout this package lives in (editable installs), for its scripts/recipes/; else the working directory.
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT_FILE = "method_result.json"
TRAIN_COMMAND = [sys.executable, "-m", "trl_powerflow", "train"]


def default_recipe() -> str:
    """scripts/recipes/tiny_cpu.yaml of the package's source checkout if there is one, else of the working directory
    (a non-editable install has no recipes: run from a checkout or pass --config)."""
    path = REPO_ROOT / "scripts" / "recipes" / "tiny_cpu.yaml"
    return str(path) if path.is_file() else os.path.join("scripts", "recipes", "tiny_cpu.yaml")


@dataclasses.dataclass
class Method:
    trainer: str | None  # None: evaluated only (no training)
    args: list[str]
    description: str
    uses_labels: bool = False


def builtin_methods(alpha_high: float, alpha_low: float) -> dict[str, Method]:
    high, low = f"{alpha_high:g}", f"{alpha_low:g}"
    return {
        "base": Method(None, [], "starting model, no training"),
        "grpo_accuracy": Method("grpo", ["--reward_funcs", "accuracy"], "GRPO + verifier reward", uses_labels=True),
        "intuitor": Method("grpo", ["--reward_funcs", "self_certainty"], "GRPO + self-certainty (Intuitor)"),
        "entropy_min": Method("grpo", ["--reward_funcs", "entropy_minimisation"], "GRPO + -entropy (EM-RL)"),
        "ttrl": Method("grpo", ["--reward_funcs", "majority_vote"], "GRPO + majority vote (TTRL)"),
        "empo": Method("grpo", ["--reward_funcs", "semantic_entropy"], "GRPO + semantic entropy (EMPO)"),
        "powerflow": Method("powerflow", ["--alpha", high, "--objective", "la_tb"], f"PowerFlow alpha={high}"),
        "powerflow_low_alpha": Method("powerflow", ["--alpha", low, "--objective", "la_tb"], f"PowerFlow alpha={low}"),
        "powerflow_tb_traj": Method(
            "powerflow", ["--alpha", high, "--objective", "tb_traj"], f"PowerFlow-traj alpha={high}"
        ),
        "powerflow_tb_token": Method(
            "powerflow", ["--alpha", high, "--objective", "tb_token"], f"PowerFlow-token alpha={high}"
        ),
        "powerflow_la_tb_exact": Method(
            "powerflow", ["--alpha", high, "--objective", "la_tb_exact"], f"PowerFlow exact-length alpha={high}"
        ),
        "powerflow_token_balance": Method(
            "powerflow", ["--alpha", high, "--objective", "token_balance"], f"PowerFlow token balance alpha={high}"
        ),
    }


QUICK_TRAIN_ARGS = (
    "--per_device_train_batch_size 4 --num_generations 2 --max_completion_length 8 --logging_steps 1 "
    "--learning_rate 1e-4"
)


LABEL_FREE_REWARDS = ("boxed_format", "majority_vote", "semantic_entropy", "self_certainty", "entropy_minimisation")


def reward_names(flags: list[str]) -> list[str]:
    if "--reward_funcs" not in flags:
        return []
    names = []
    for word in flags[flags.index("--reward_funcs") + 1 :]:
        if word.startswith("--"):
            break
        names.append(word)
    return names


def uses_verifier(trainer: str | None, words: list[str]) -> bool:
    """Whether a custom method's rewards may use labels or a task verifier: any reward but the label-free ones."""
    return trainer is not None and any(n not in LABEL_FREE_REWARDS for n in reward_names(words))


def describe(trainer: str | None, flags: list[str]) -> str:
    if trainer is None:
        model = flags[flags.index("--model_name_or_path") + 1] if "--model_name_or_path" in flags else "start model"
        return f"not trained ({os.path.basename(os.path.normpath(model))})"
    rewards = [n.rsplit(":", 1)[-1] for n in reward_names(flags)]
    rest = [w for w in flags if w not in reward_names(flags) and w != "--reward_funcs"]
    text = {"grpo": "GRPO", "powerflow": "PowerFlow"}[trainer]
    if rewards:
        text += " + " + ", ".join(rewards)
    return f"{text} {' '.join(rest)}".strip()


def resolve_methods(args) -> dict[str, Method]:
    methods = builtin_methods(args.alpha_high, args.alpha_low)
    for spec in args.method:
        name, sep, rest = spec.partition("=")
        words = shlex.split(rest)
        if not sep or not name.strip() or not words or words[0] not in ("grpo", "powerflow", "none"):
            raise ValueError(f'--method {spec!r}: expected NAME="TRAINER FLAGS" with TRAINER grpo, powerflow or none.')
        trainer = None if words[0] == "none" else words[0]
        methods[name.strip()] = Method(trainer, words[1:], describe(trainer, words[1:]), uses_verifier(trainer, words))
    names = args.methods or list(methods)
    unknown = [n for n in names if n not in methods]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; known: {sorted(methods)} (add one with --method).")
    return {n: methods[n] for n in names}


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def train_argv(args, method: Method, run_dir: str, model_path: str) -> list[str]:
    save_steps = args.eval_every if args.eval_every else args.max_steps
    argv = ["--config", args.config, "--trainer", method.trainer, "--model_name_or_path", model_path]
    if args.dataset_name:
        argv += ["--dataset_name", args.dataset_name]
    if args.prompt_column != "prompt":
        argv += ["--prompt_column", args.prompt_column]
    if args.prompt_suffix:
        argv += ["--prompt_suffix", args.prompt_suffix]
    if args.system_prompt:
        argv += ["--system_prompt", args.system_prompt]
    if args.prompt_as_chat:
        argv += ["--prompt_as_chat", "true"]
    argv += [
        "--output_dir", run_dir,
        "--max_steps", str(args.max_steps),
        "--save_strategy", "steps",
        "--save_steps", str(save_steps),
        "--save_only_model", "true",
        "--seed", str(args.seed),
        "--report_to", "none",
    ]  # fmt: skip
    argv += shlex.split(args.train_args)
    argv += shlex.split(args.powerflow_args if method.trainer == "powerflow" else args.grpo_args)
    return argv + list(method.args)


def run_training(args, argv: list[str], run_dir: str) -> float:
    """Train one method (`trl-powerflow train argv`): a subprocess logging to `run_dir`/train.log, or with
    `args.in_process` a call of its `main` here. Returns the wall time."""
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, "train.log")
    start = time.time()
    if args.in_process:
        from trl_powerflow.cli.train import main as train_main

        train_main(argv)
        return time.time() - start
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join([*TRAIN_COMMAND, *argv]) + "\n")
        log.flush()
        completed = subprocess.run([*TRAIN_COMMAND, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
    if completed.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"trl-powerflow train failed (exit {completed.returncode}); see {log_path}:\n{tail}")
    return time.time() - start


def checkpoints(run_dir: str, max_steps: int) -> list[tuple[int, str]]:
    """(step, path) of the saved checkpoints, plus the final model (step max_steps) when no checkpoint has it."""
    found = []
    for name in os.listdir(run_dir):
        if name.startswith("checkpoint-") and name.split("-", 1)[1].isdigit():
            found.append((int(name.split("-", 1)[1]), os.path.join(run_dir, name)))
    found.sort()
    if not found or found[-1][0] != max_steps:
        found.append((max_steps, run_dir))
    return found


def log_history(run_dir: str) -> list[dict]:
    """The per-step entries of the last checkpoint's trainer_state.json log_history, [] if there is none."""
    states = [p for _, p in checkpoints(run_dir, -1) if os.path.isfile(os.path.join(p, "trainer_state.json"))]
    if not states:
        return []
    with open(os.path.join(states[-1], "trainer_state.json")) as f:
        return [h for h in json.load(f).get("log_history", []) if "step" in h]


def training_log(run_dir: str) -> list[dict]:
    """The training metrics of the comparison's plots and results.json, per logged step (`log_history`)."""
    keys = ("loss", "reward", "completions/mean_length", "entropy", "powerflow/residual_abs_mean", "powerflow/ess")
    return [{"step": h["step"], **{k: h[k] for k in keys if k in h}} for h in log_history(run_dir)]


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def load_eval_rows(args) -> list[dict]:
    from trl_powerflow.data import held_out_prompts

    return held_out_prompts(  # at most eval_max_prompts rows either way
        args.eval_dataset, args.eval_max_prompts, prompt_suffix=args.prompt_suffix, system_prompt=args.system_prompt,
        split=args.eval_split, prompt_column=args.prompt_column, as_chat=args.prompt_as_chat,
    )  # fmt: skip


def import_object(spec: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec!r} must look like 'package.module:function'.")
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


class Evaluator:
    """Evaluates model directories on fixed rows with fixed sampling settings (one embedder, loaded once)."""

    def __init__(self, args, rows, tokenizer_path):
        self.args = args
        self.rows = rows
        self.tokenizer_path = tokenizer_path
        self.task_metrics = import_object(args.task_metrics) if args.task_metrics else None
        self.embedder = None
        if args.embedder == "auto":
            from trl_powerflow.evaluation.metrics import load_default_embedder

            self.embedder = load_default_embedder()
        elif args.embedder != "none":
            raise ValueError(f"--embedder must be 'auto' or 'none', got {args.embedder!r}.")

    def settings(self) -> dict:
        a = self.args
        return {
            "num_samples": a.num_samples,
            "max_new_tokens": a.max_new_tokens,
            "temperature": a.eval_temperature,
            "seed": a.seed,
            "num_prompts": len(self.rows),
            "task_metrics": a.task_metrics,
            "semantic_diversity": self.embedder is not None,
            **({"answer_column": a.answer_column} if a.answer_column != "answer" else {}),
        }

    def __call__(self, model_path: str) -> dict:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trl_powerflow.evaluation import evaluate_model

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        result = evaluate_model(
            model,
            tokenizer,
            self.rows,
            num_samples=self.args.num_samples,
            max_new_tokens=self.args.max_new_tokens,
            temperature=self.args.eval_temperature,
            seed=self.args.seed,
            batch_size=self.args.eval_batch_size,
            embedder=self.embedder,
            answer_column=self.args.answer_column,
            return_completions=True,
            num_examples=2,
        )
        completions = result.pop("completions")
        task_keys = []
        if self.task_metrics is not None:
            extra = self.task_metrics(self.rows, completions)
            task_keys = list(extra)
            result["metrics"].update(extra)
        return {"metrics": result["metrics"], "task_metric_keys": task_keys, "samples": result["samples"]}


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_comparison(args, command: str) -> dict:
    """Train and evaluate every method of `args` (the options of `trl-powerflow compare`), reusing finished ones;
    write results.json, results.md and the plots in `args.output_dir`; `command` is recorded as what produced them.
    Returns {"info": ..., "methods": ...}; raises SystemExit naming the methods that failed (after writing)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    methods = resolve_methods(args)
    os.makedirs(args.output_dir, exist_ok=True)
    model_path = args.model_name_or_path
    if model_path is None:
        from trl_powerflow.toys.tiny_models import save_tiny_model

        model_path = save_tiny_model(os.path.join(args.output_dir, "tiny-model"))

    rows = load_eval_rows(args)
    evaluator = Evaluator(args, rows, model_path)
    eval_settings = evaluator.settings()
    started = time.time()
    results: dict[str, dict] = {}
    base_eval = None
    failures = []
    for name, method in methods.items():
        run_dir = os.path.join(args.output_dir, "runs", name)
        start_model = model_path
        method_args = list(method.args)
        if method.trainer is None and "--model_name_or_path" in method_args:
            start_model = method_args[method_args.index("--model_name_or_path") + 1]
        argv_train = train_argv(args, method, run_dir, model_path) if method.trainer else None
        key = fingerprint({"train": argv_train, "model": start_model, "eval": eval_settings, "rows": rows})
        cached_path = os.path.join(run_dir, RESULT_FILE)
        if not args.force and os.path.isfile(cached_path):
            with open(cached_path) as f:
                cached = json.load(f)
            if cached.get("fingerprint") == key:
                print(f"[compare] {name}: reusing {cached_path}", flush=True)
                results[name] = cached
                if method.trainer is None and start_model == model_path:
                    base_eval = cached["evals"][0]
                continue
        result = {
            "description": method.description,
            "trainer": method.trainer,
            "uses_labels": method.uses_labels,
            "train_args": argv_train,
            "fingerprint": key,
            "evals": [],
        }
        print(f"[compare] {name}: {method.description}", flush=True)
        method_start = time.time()
        try:
            if method.trainer is None:
                evaluation = evaluator(start_model)
                result["evals"] = [{"step": 0, **evaluation}]
                if start_model == model_path:
                    base_eval = result["evals"][0]
            else:
                if base_eval is None:  # step 0 of every curve: the starting model, evaluated once
                    base_eval = {"step": 0, **evaluator(model_path)}
                result["train_seconds"] = run_training(args, argv_train, run_dir)
                result["evals"].append(base_eval)
                eval_start = time.time()
                for step, path in checkpoints(run_dir, args.max_steps):
                    result["evals"].append({"step": step, **evaluator(path)})
                result["eval_seconds"] = time.time() - eval_start
                result["train_log"] = training_log(run_dir)
            last = result["evals"][-1]["metrics"]
            shown = {k: round(v, 3) for k, v in last.items() if isinstance(v, float)}
            print(f"[compare] {name}: {shown}", flush=True)
        except Exception as error:  # keep going: one broken method should not lose the others
            result["error"] = f"{type(error).__name__}: {error}"
            failures.append(name)
            print(f"[compare] {name} FAILED: {result['error']}", flush=True)
        else:
            result["wall_seconds"] = time.time() - method_start  # training + evaluations of this method
            os.makedirs(run_dir, exist_ok=True)
            with open(cached_path, "w") as f:
                json.dump(result, f, indent=2)
        results[name] = result

    k = args.num_samples
    some_metrics = next((r["evals"][-1]["metrics"] for r in results.values() if r.get("evals")), {})
    info = {
        "title": args.title or "Same-harness comparison",
        "command": command,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "eval_every": args.eval_every,
        "model": model_path,
        "config": args.config,
        "dataset": args.dataset_name,
        "eval_dataset": args.eval_dataset,
        "eval_settings": eval_settings,
        "quality_metric": args.quality_metric or default_quality_metric(some_metrics, k),
        "diversity_metric": args.diversity_metric or default_diversity_metric(some_metrics),
        "wall_seconds": time.time() - started,
        # time the methods took when they ran (cached methods keep theirs): the cost of the whole comparison
        "compute_seconds": sum(r.get("wall_seconds", 0.0) for r in results.values()),
        "failures": failures,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"info": info, "methods": results}, f, indent=2)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(markdown(results, info))
    if any(r.get("evals") for r in results.values()):
        plot(results, info, args.output_dir)
    print(markdown(results, info))
    print(f"[compare] wrote {args.output_dir} in {info['wall_seconds']:.0f}s", flush=True)
    if failures:
        raise SystemExit(f"[compare] failed methods: {failures}")
    return {"info": info, "methods": results}
