r"""With and without BuPO, in the same harness: same model, data, recipe, seed, logging and evaluation.

`run_bupo_comparison(args, command)` (`args`: the options of `trl-powerflow bupo-compare`, see
`trl_powerflow.cli.bupo_compare`): for each trainer (`args.trainers`: powerflow, grpo) it runs the recipe twice with
`BuPOPowerFlowTrainer` / `BuPOGRPOTrainer`: once with `bupo_layer=None` (the plain trainer: BuPO changes nothing
then) and once with `bupo_layer=k, bupo_steps=N`. Every run logs the per-layer entropies of the internal policies
(`LayerEntropyCallback` on a fixed probe set of evaluation prompts) and is evaluated by sampling with the package's
evaluation harness (`trl_powerflow.evaluation.evaluate_model`). It writes `<output_dir>/results.json` (settings, log
histories, final metrics), `summary.md` (printed), `loss.png` and `layer_entropy.png`.

`run_toy(args)` (`--toy`) runs the comparison on the enumerable toy instead (PowerFlow only, 2-layer toy model, prompt
"q", 40 completions): there the exact KL from the policy to the LA-TB fixed point of `trl_powerflow.toys.enumerable`
is computed every `toy_eval_every` steps, so the effect of BuPO on convergence is measured exactly
(`toy_results.json`, `toy_summary.md`, `toy_kl.png`).
"""

from __future__ import annotations

import json
import os
import time

from ..evaluation.markdown import md_table
from .compare import REPO_ROOT

# Recipe keys that are not training arguments of the configs (or are set per run here).
_SCRIPT_KEYS = ("trainer", "output_dir", "reward_funcs", "save_steps", "dataset_name", "model_name_or_path")


def load_recipe(path):
    import yaml

    with open(path) as f:
        recipe = yaml.safe_load(f) or {}
    return {k: v for k, v in recipe.items() if k not in _SCRIPT_KEYS}


def load_data(args):
    from trl_powerflow.data import load_prompt_dataset
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    train = load_prompt_dataset(args.dataset) if args.dataset else tiny_prompt_dataset(n=64)
    if args.eval_dataset:
        evaluation = load_prompt_dataset(args.eval_dataset, max_samples=args.eval_prompts)
    else:
        evaluation = tiny_prompt_dataset(n=args.eval_prompts, seed=1)
    return train, evaluation


def run_one(args, kind, variant, seed, model_path, settings, train, evaluation, tokenizer):
    import torch

    from trl_powerflow.baselines import get_reward_funcs, set_reward_model
    from trl_powerflow.bupo import BuPOGRPOConfig, BuPOGRPOTrainer, BuPOPowerFlowConfig, BuPOPowerFlowTrainer
    from trl_powerflow.bupo.logit_lens import LayerEntropyCallback, install_first
    from trl_powerflow.evaluation import evaluate_model

    name = f"{kind}-{variant}"
    out = os.path.join(args.output_dir, f"{name}-seed{seed}")
    bupo = dict(bupo_layer=settings["bupo_layer"], bupo_steps=settings["bupo_steps"]) if variant == "bupo" else {}
    common = dict(settings["recipe"], output_dir=out, save_strategy="no", report_to=[], seed=seed, **bupo)
    probe = list(evaluation["prompt"][: args.probe_prompts])
    callback = LayerEntropyCallback(
        tokenizer,
        probe,
        every_steps=args.entropy_every,
        num_samples=2,
        max_new_tokens=common.get("max_completion_length", 32),
        seed=0,
    )
    if kind == "powerflow":
        trainer = BuPOPowerFlowTrainer(
            model=model_path, args=BuPOPowerFlowConfig(**common), train_dataset=train, processing_class=tokenizer
        )
    else:
        grpo_common = {k: v for k, v in common.items() if k not in settings["powerflow_only"]}
        rewards = get_reward_funcs(args.grpo_rewards, tokenizer=tokenizer)
        trainer = BuPOGRPOTrainer(
            model=model_path,
            reward_funcs=rewards,
            args=BuPOGRPOConfig(**grpo_common),
            train_dataset=train,
            processing_class=tokenizer,
        )
        set_reward_model(rewards, trainer.model)
    install_first(trainer, callback)
    start = time.time()
    trainer.train()
    train_time = time.time() - start
    if args.save_models:
        trainer.save_model(out)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    with torch.no_grad():
        result = evaluate_model(
            model,
            tokenizer,
            evaluation,
            num_samples=args.eval_samples,
            max_new_tokens=common.get("max_completion_length", 32),
            seed=0,
            embedder=None,
            name=name,
        )
    return {
        "name": name,
        "seed": seed,
        "trainer": kind,
        "bupo": bupo or None,
        "train_time_s": train_time,
        "log_history": trainer.state.log_history,
        "eval": result,
    }


def series(history, key):
    points = [(e["step"], e[key]) for e in history if key in e and "train_runtime" not in e]
    return [p[0] for p in points], [p[1] for p in points]


def _mean_range(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}–{max(values):.3f})"


def _last(history, key, count=5):
    values = series(history, key)[1][-count:]
    return sum(values) / len(values) if values else None


def summarise(results, settings) -> str:
    from trl_powerflow.bupo.logit_lens import entropy_history

    k, n = settings["bupo_layer"], settings["bupo_steps"]
    names = list(dict.fromkeys(r["name"] for r in results))
    groups = {name: [r for r in results if r["name"] == name] for name in names}
    seeds = sorted({r["seed"] for r in results})
    kk = results[0]["eval"]["metrics"]["num_samples"]
    lines = [
        f"BuPO: layer k = {k} of {settings['num_layers']}, first N = {n} of {settings['max_steps']} optimiser steps; "
        f"model {settings['model']}; seeds {seeds} (mean, min–max over seeds); evaluation: "
        f"{results[0]['eval']['metrics']['num_prompts']} prompts x {kk} samples.",
        "",
    ]
    rows = []
    for name, runs in groups.items():
        early, late = [], []
        for r in runs:
            steps, loss = series(r["log_history"], "loss")
            first = [v for s, v in zip(steps, loss) if s <= n]
            early.append(sum(first) / len(first) if first else None)
            late.append(_last(r["log_history"], "loss"))

        def metric(key, runs=runs):
            return _mean_range([r["eval"]["metrics"][key] for r in runs])

        rows.append([
            name, _mean_range(early), _mean_range(late), metric(f"avg@{kk}"), metric(f"pass@{kk}"),
            metric(f"maj@{kk}"), metric("mean_completion_tokens"), _mean_range([r["train_time_s"] for r in runs]),
        ])  # fmt: skip
    header = ["run", "loss, steps 1..N", "loss, last 5 steps", f"eval avg@{kk}", f"eval pass@{kk}", f"eval maj@{kk}",
              "eval tokens", "train time (s)"]  # fmt: skip
    lines += md_table(header, rows)
    lines += [
        "",
        "Mean entropy (nats) of each internal layer policy (logit lens, final norm applied) on the probe completions, "
        "mean over seeds (layer 0 = embeddings, last = the model's own policy):",
        "",
    ]
    rows, header_layers = [], None
    for name, runs in groups.items():
        histories = [entropy_history(r["log_history"]) for r in runs]
        steps, layers = histories[0]
        header_layers = header_layers or layers
        for step in sorted({steps[0], min(steps, key=lambda s: abs(s - n)), steps[-1]}):
            i = steps.index(step)
            cells = [sum(h[1][layer][i] for h in histories) / len(histories) for layer in layers]
            rows.append([name, step, *(f"{v:.3f}" for v in cells)])
    if rows:
        lines += md_table(["run", "step"] + [f"L{layer}" for layer in header_layers], rows)
    keys = [
        "powerflow/residual_abs_mean",
        "powerflow/policy_logp_per_token",
        "powerflow/base_logp_per_token",
        "entropy",
    ]
    if any(r["trainer"] == "powerflow" for r in results):
        lines += ["", "PowerFlow training metrics (mean of the last 5 logged steps; mean, min–max over seeds):", ""]
        rows = [
            [name] + [_mean_range([_last(r["log_history"], key) for r in runs]) for key in keys]
            for name, runs in groups.items()
            if runs[0]["trainer"] == "powerflow"
        ]
        lines += md_table(["run", *keys], rows)
    if any(r["trainer"] == "grpo" for r in results):
        lines += ["", "GRPO training metrics (mean of the last 5 logged steps; mean, min–max over seeds):", ""]
        keys = ("reward", "frac_reward_zero_std", "entropy")
        rows = [
            [name] + [_mean_range([_last(r["log_history"], key) for r in runs]) for key in keys]
            for name, runs in groups.items()
            if runs[0]["trainer"] == "grpo"
        ]
        lines += md_table(["run", *keys], rows)
    return "\n".join(lines)


def plot_losses(results, path, mark):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["trainer"] for r in results})
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for r in results:
            if r["trainer"] == kind:
                steps, loss = series(r["log_history"], "loss")
                color = "C0" if r["name"].endswith("baseline") else "C1"
                ax.plot(steps, loss, marker="o", ms=2, lw=1, color=color, alpha=0.8, label=f"{r['name']} s{r['seed']}")
        ax.axvline(mark, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{kind}: training loss")
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- exact toy
def run_toy(args):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from trl_powerflow.bupo import BuPOPowerFlowConfig, BuPOPowerFlowTrainer
    from trl_powerflow.bupo.logit_lens import LayerEntropyCallback
    from trl_powerflow.toys.enumerable import (
        TOY_TOKENS,
        completion_lengths,
        completion_logprobs,
        enumerate_completions,
        la_tb_fixed_point,
        save_toy_model,
    )

    model_dir = save_toy_model(os.path.join(args.output_dir, "toy-2layers"), num_hidden_layers=2)
    prompt = [TOY_TOKENS.index("q")]
    completions = enumerate_completions(3)
    lengths = completion_lengths(completions)
    base_logp = completion_logprobs(AutoModelForCausalLM.from_pretrained(model_dir), prompt, completions)
    target = la_tb_fixed_point(base_logp, lengths, args.toy_alpha)
    layer = args.bupo_layer if args.bupo_layer is not None else 1
    bupo_steps = args.bupo_steps if args.bupo_steps is not None else args.toy_steps // 6

    class ExactKL(TrainerCallback):
        def __init__(self):
            self.points = []

        def measure(self, step, model):
            was_training = model.training
            model.eval()
            logp = completion_logprobs(model, prompt, completions)
            model.train(was_training)
            self.points.append((step, (logp.exp() * (logp - target)).sum().item()))

        def on_train_begin(self, args_, state, control, model=None, **kwargs):
            self.measure(0, model)

        def on_step_end(self, args_, state, control, model=None, **kwargs):
            if state.global_step % args.toy_eval_every == 0:
                self.measure(state.global_step, model)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    runs = []
    for seed in args.toy_seeds:
        for variant in ("baseline", "bupo"):
            kl = ExactKL()
            entropy = LayerEntropyCallback(
                tokenizer, ["q"], every_steps=args.toy_eval_every, num_samples=64, max_new_tokens=3
            )
            config = BuPOPowerFlowConfig(
                output_dir=os.path.join(args.output_dir, f"toy-{variant}-{seed}"),
                alpha=args.toy_alpha,
                max_completion_length=3,
                num_generations=16,
                per_device_train_batch_size=16,
                learning_rate=5e-3,
                log_z_learning_rate=5e-2,
                lr_scheduler_type="linear",
                max_steps=args.toy_steps,
                logging_steps=args.toy_eval_every,
                disable_dropout=True,
                bf16=False,
                use_cpu=True,
                report_to=[],
                save_strategy="no",
                disable_tqdm=True,
                seed=seed,
                **(dict(bupo_layer=layer, bupo_steps=bupo_steps) if variant == "bupo" else {}),
            )
            trainer = BuPOPowerFlowTrainer(
                model=model_dir,
                args=config,
                train_dataset=Dataset.from_dict({"prompt": ["q"] * 64}),
                callbacks=[kl, entropy],
            )
            start = time.time()
            trainer.train()
            runs.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "kl": kl.points,
                    "train_time_s": time.time() - start,
                    "log_history": trainer.state.log_history,
                }
            )
            print(
                f"[bupo_compare --toy] seed {seed} {variant}: exact KL {kl.points[0][1]:.4f} -> "
                f"{kl.points[-1][1]:.4f}",
                flush=True,
            )
    steps = [p[0] for p in runs[0]["kl"]]
    lines = [
        f"Enumerable toy (2-layer toy model, prompt 'q', 40 completions), PowerFlow LA-TB, alpha {args.toy_alpha}, "
        f"{args.toy_steps} steps; BuPO: layer {layer} of 2 for the first {bupo_steps} steps. Exact KL(pi || pi*) "
        f"to the LA-TB fixed point, mean over seeds {args.toy_seeds} (min-max):",
        "",
    ]
    rows = []
    for i, step in enumerate(steps):
        cells = []
        for variant in ("baseline", "bupo"):
            values = [r["kl"][i][1] for r in runs if r["variant"] == variant]
            cells.append(f"{sum(values) / len(values):.4f} ({min(values):.4f}-{max(values):.4f})")
        rows.append([step, *cells])
    lines += md_table(["step", "baseline", "BuPO"], rows)
    summary = "\n".join(lines)
    with open(os.path.join(args.output_dir, "toy_results.json"), "w") as f:
        json.dump(
            {"layer": layer, "bupo_steps": bupo_steps, "alpha": args.toy_alpha, "runs": runs}, f, indent=1, default=str
        )
    with open(os.path.join(args.output_dir, "toy_summary.md"), "w") as f:
        f.write(summary + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for r in runs:
        ax.plot(
            [p[0] for p in r["kl"]],
            [p[1] for p in r["kl"]],
            color="C0" if r["variant"] == "baseline" else "C1",
            alpha=0.8,
            label=f"{r['variant']} (seed {r['seed']})",
        )
    ax.axvline(bupo_steps, color="grey", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("exact KL(pi || pi*)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "toy_kl.png"), dpi=120)
    plt.close(fig)
    print(summary)
    return runs


def run_bupo_comparison(args, command: str):
    """Run the comparison of `args` (the options of `trl-powerflow bupo-compare`): `--toy` the exact one, else with
    and without BuPO for each trainer and seed; writes its files in `args.output_dir` and returns the runs."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if args.toy:
        import torch

        torch.set_num_threads(1)
        os.makedirs(args.output_dir, exist_ok=True)
        return run_toy(args)
    import dataclasses

    import torch
    from transformers import AutoConfig, AutoTokenizer
    from trl import GRPOConfig

    from trl_powerflow import PowerFlowConfig
    from trl_powerflow.toys.tiny_models import save_tiny_model

    torch.set_num_threads(1)
    os.makedirs(args.output_dir, exist_ok=True)
    model_path = args.model or save_tiny_model(
        os.path.join(args.output_dir, f"tiny-model-{args.num_layers}layers"), num_hidden_layers=args.num_layers
    )
    num_layers = AutoConfig.from_pretrained(model_path).get_text_config().num_hidden_layers
    recipe = load_recipe(args.config)
    for key in ("max_steps", "learning_rate", "max_completion_length", "per_device_train_batch_size"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    recipe.setdefault("disable_tqdm", True)
    max_steps = recipe.get("max_steps", 20)
    powerflow_only = {f.name for f in dataclasses.fields(PowerFlowConfig)} - {
        f.name for f in dataclasses.fields(GRPOConfig)
    }
    settings = {
        "model": model_path,
        "num_layers": num_layers,
        "bupo_layer": args.bupo_layer if args.bupo_layer is not None else max(1, num_layers // 2),
        "bupo_steps": args.bupo_steps if args.bupo_steps is not None else max(1, max_steps // 4),
        "max_steps": max_steps,
        "recipe": recipe,
        "powerflow_only": sorted(powerflow_only),
        "grpo_rewards": args.grpo_rewards,
        "seeds": args.seeds,
        "config": os.path.relpath(args.config, REPO_ROOT if (REPO_ROOT / "scripts").is_dir() else os.getcwd()),
        "command": command,
    }
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left", truncation_side="left")
    train, evaluation = load_data(args)
    results = []
    for kind in args.trainers:
        for variant in ("baseline", "bupo"):
            for seed in args.seeds:
                print(f"[bupo_compare] {kind} {variant} seed {seed}", flush=True)
                results.append(run_one(args, kind, variant, seed, model_path, settings, train, evaluation, tokenizer))
    summary = summarise(results, settings)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"settings": settings, "runs": results}, f, indent=1, default=str)
    with open(os.path.join(args.output_dir, "summary.md"), "w") as f:
        f.write(summary + "\n")
    from trl_powerflow.bupo.plots import plot_layer_entropy

    plot_layer_entropy(
        {r["name"]: r["log_history"] for r in results if r["seed"] == args.seeds[0]},
        os.path.join(args.output_dir, "layer_entropy.png"),
        marks=[settings["bupo_steps"]],
        title=f"Internal layer policy entropy (BuPO: layer {settings['bupo_layer']}, {settings['bupo_steps']} steps)",
    )
    plot_losses(results, os.path.join(args.output_dir, "loss.png"), settings["bupo_steps"])
    print(summary)
    return results
