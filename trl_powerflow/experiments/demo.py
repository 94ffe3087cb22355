r"""The digit-chain demo and the before/after evaluation of `scripts/train.py`.

    python scripts/train.py --config scripts/recipes/demo_digit_chains.yaml

**The shipped base.** `DIGIT_CHAIN_BASE` (``trl_powerflow/assets/digit_chain_base``, package data, 2.4 MB) is a
tiny Qwen2 (hidden 128, 2 layers, 0.59 M parameters, fp32, the package's offline tokenizer) pretrained offline on
noisy worked solutions of the digit-chain task of `trl_powerflow.experiments.synthetic_tasks` (each step wrong with
probability 0.2, a quarter bare guesses) by::

    OMP_NUM_THREADS=1 python scripts/pretrain_tiny_base.py --task reasoning --steps 1500 --output_dir <dir>  # seed 0

(``<dir>/base`` copied here, with ``pretrain.json`` holding its settings, losses and sampled check; 25 minutes on a
busy 2-core CPU). 1500 steps rather than the script's default 1000: here the 1000-step run stalled before it learned
the digit arithmetic (step error rate 0.56, avg@8 0.12). Sampled at temperature 1 on the 64 held-out prompts the
shipped base has avg@8 0.39, maj@8 0.72 and pass@8 1.0, and a step error rate of 0.20 (the corpus's): its most likely
answer is usually right, but most samples are not: a base that sharpening toward p_base^alpha can visibly improve.

**The prompt sets.** `digit_chain_splits` rebuilds the two prompt sets that pretraining excluded from its corpus:
up to 64 held-out evaluation prompts (`chain_rows(64, seed=1000)`) and up to 256 RL training prompts (from
`chain_rows(..., seed=2000)`, minus any evaluation prompt). The held-out prompts are never seen in pretraining or RL.
The training rows keep their ``answer`` column (for `--trainer grpo --reward_funcs accuracy`); label-free PowerFlow
without reward functions never reads it.

**Before/after evaluation** (`--eval_before_after`): the starting model and the trained model (loaded back from the
output directory with ``from_pretrained``) are sampled alike (temperature 1, fixed seed) on the same held-out prompts;
`format_before_after_table` prints avg@k (accuracy), pass@k, maj@k, mean completion length and distinct answers per
prompt (plus, on digit chains, the fraction of bare guesses and the step error rate), and `plot_before_after` draws
them as bars.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..evaluation.markdown import md_table

__all__ = [
    "DEMOS",
    "DIGIT_CHAIN_BASE",
    "before_after_columns",
    "digit_chain_base_path",
    "digit_chain_splits",
    "evaluate_checkpoint",
    "format_before_after_table",
    "plot_before_after",
    "write_before_after",
]

DEMOS = ("digit_chains",)
DIGIT_CHAIN_BASE = str(Path(__file__).resolve().parents[1] / "assets" / "digit_chain_base")

# The prompt sets `scripts/pretrain_tiny_base.py --task reasoning --seed 0` kept out of the shipped base's corpus.
DIGIT_CHAIN_EVAL_SEED = 1000
DIGIT_CHAIN_TRAIN_SEED = 2000
DIGIT_CHAIN_MAX_EVAL = 64
DIGIT_CHAIN_MAX_TRAIN = 256

# (metric key with "@k" for the number of samples, column label); task columns are shown when present.
_COLUMNS = (
    ("avg@k", "avg@{k} (accuracy)"),
    ("pass@k", "pass@{k}"),
    ("maj@k", "maj@{k}"),
    ("mean_completion_tokens", "mean length (tokens)"),
    ("distinct_answer_fraction", "distinct answers"),
)
_TASK_COLUMNS = (
    ("guess_fraction", "bare guesses"),
    ("step_error_rate", "step errors"),
)


def digit_chain_base_path() -> str:
    """The directory of the shipped digit-chain base model; fails with what to do when the package data is missing."""
    if not os.path.isfile(os.path.join(DIGIT_CHAIN_BASE, "model.safetensors")):
        raise FileNotFoundError(
            f"The shipped digit-chain base model is missing from {DIGIT_CHAIN_BASE}: reinstall trl-powerflow (its "
            "package data holds it), or rebuild it with `python scripts/pretrain_tiny_base.py --task reasoning "
            "--output_dir <dir>` and pass --model_name_or_path <dir>/base."
        )
    return DIGIT_CHAIN_BASE


def digit_chain_splits(
    num_train: int = DIGIT_CHAIN_MAX_TRAIN, num_eval: int = DIGIT_CHAIN_MAX_EVAL
) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out evaluation rows) of the digit-chain task, ``{"prompt": [user message], "answer"}``,
    disjoint, and both excluded from the shipped base's pretraining corpus. Deterministic: the first `num_eval`
    held-out rows are always the same (a prefix of the full set), and so are the first `num_train` training rows."""
    from .synthetic_tasks import chain_rows

    if not 1 <= num_train <= DIGIT_CHAIN_MAX_TRAIN:
        raise ValueError(
            f"The digit-chain demo has {DIGIT_CHAIN_MAX_TRAIN} training prompts kept out of the base's pretraining; "
            f"asked for {num_train} (--max_train_samples). Pass 1 to {DIGIT_CHAIN_MAX_TRAIN}."
        )
    if not 1 <= num_eval <= DIGIT_CHAIN_MAX_EVAL:
        raise ValueError(
            f"The digit-chain demo has {DIGIT_CHAIN_MAX_EVAL} held-out prompts never seen in pretraining or RL; asked "
            f"for {num_eval} (--eval_prompts). Pass 1 to {DIGIT_CHAIN_MAX_EVAL}."
        )
    eval_rows = chain_rows(DIGIT_CHAIN_MAX_EVAL, seed=DIGIT_CHAIN_EVAL_SEED)
    held_out = {row["prompt"][0]["content"] for row in eval_rows}
    candidates = chain_rows(DIGIT_CHAIN_MAX_TRAIN + DIGIT_CHAIN_MAX_EVAL, seed=DIGIT_CHAIN_TRAIN_SEED)
    train_rows = [row for row in candidates if row["prompt"][0]["content"] not in held_out][:DIGIT_CHAIN_MAX_TRAIN]
    return train_rows[:num_train], eval_rows[:num_eval]


def evaluate_checkpoint(
    path: str,
    rows: Sequence[dict],
    *,
    name: str,
    num_samples: int = 8,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 16,
    task_metrics: Callable[[Sequence[dict], Sequence[Sequence[dict]]], dict] | None = None,
) -> dict:
    """Load `path` (model directory or adapter directory, `from_pretrained`) and sample `num_samples` completions at
    temperature 1 per row with a fixed seed (`trl_powerflow.evaluation.evaluate_model`); `task_metrics(rows,
    completions)` adds task-specific metrics. Returns evaluate_model's result without the completions."""
    from ..evaluation.generation import evaluate_model, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path)
    result = evaluate_model(
        model,
        tokenizer,
        list(rows),
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        seed=seed,
        batch_size=batch_size,
        embedder=None,
        return_completions=True,
        name=name,
    )
    completions = result.pop("completions")
    if task_metrics is not None:
        result["metrics"].update(task_metrics(rows, completions))
    return result


def before_after_columns(results: Sequence[dict]) -> list[tuple[str, str]]:
    """(metric key, label) of the table's columns for these results, "@k" resolved; task columns only if present."""
    k = results[0]["metrics"]["num_samples"]
    columns = [(key.replace("@k", f"@{k}"), label.format(k=k)) for key, label in _COLUMNS]
    columns += [(key, label) for key, label in _TASK_COLUMNS if any(key in r["metrics"] for r in results)]
    return columns


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _delta(before, after) -> str:
    if before is None or after is None:
        return "–"
    return f"{after - before:+.3f}"


def format_before_after_table(before: dict, after: dict) -> str:
    """Markdown table: one row before training, one after, and their difference."""
    columns = before_after_columns([before, after])
    rows = [[r["name"]] + [_cell(r["metrics"].get(key)) for key, _ in columns] for r in (before, after)]
    rows.append(["change"] + [_delta(before["metrics"].get(key), after["metrics"].get(key)) for key, _ in columns])
    lines = md_table(["model"] + [label for _, label in columns], rows)
    metrics = before["metrics"]
    lines.append("")
    lines.append(
        f"{metrics['num_prompts']} held-out prompts x {metrics['num_samples']} samples at temperature 1 "
        f"(seed {before['settings']['seed']}, at most {before['settings']['max_new_tokens']} new tokens)."
    )
    return "\n".join(lines)


def plot_before_after(before: dict, after: dict, path: str, title: str | None = None) -> str | None:
    """Grouped bars before/after for every table column (lengths on their own axis); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = before_after_columns([before, after])
    fractions = [(key, label) for key, label in columns if key != "mean_completion_tokens"]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [max(len(fractions), 1), 1.3]}
    )
    width = 0.38
    lengths = [c for c in columns if c[0] == "mean_completion_tokens"]
    for axis, cols, fmt in ((left, fractions, "{:.3f}"), (right, lengths, "{:.1f}")):
        for offset, result, color in ((-width / 2, before, "#9e9e9e"), (width / 2, after, "#1f77b4")):
            values = [result["metrics"].get(key) for key, _ in cols]
            xs = [i + offset for i in range(len(cols))]
            bars = axis.bar(xs, [v or 0.0 for v in values], width, label=result["name"], color=color)
            axis.bar_label(bars, labels=["–" if v is None else fmt.format(v) for v in values], fontsize=7)
        axis.set_xticks(range(len(cols)), [label.replace(" (", "\n(") for _, label in cols], fontsize=8)
    left.set_ylim(0, 1.1)
    left.set_ylabel("fraction")
    left.legend(loc="upper left", fontsize=8)
    right.set_ylabel("tokens")
    right.set_ylim(0, 1.2 * max(r["metrics"]["mean_completion_tokens"] for r in (before, after)) + 1)
    metrics = before["metrics"]
    fig.suptitle(
        (title or "Before and after training")
        + f"\n{metrics['num_prompts']} held-out prompts x {metrics['num_samples']} samples",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_before_after(before: dict, after: dict, output_dir: str, info: dict | None = None) -> dict:
    """Write ``before_after.md`` (the table), ``before_after.json`` (both results and `info`) and
    ``before_after.png`` (the plot, when matplotlib is installed) in `output_dir`. Returns {kind: path}."""
    os.makedirs(output_dir, exist_ok=True)
    table = format_before_after_table(before, after)
    paths = {
        "table": os.path.join(output_dir, "before_after.md"),
        "json": os.path.join(output_dir, "before_after.json"),
    }
    with open(paths["table"], "w") as f:
        f.write(table + "\n")
    with open(paths["json"], "w") as f:
        json.dump({"before": before, "after": after, **(info or {})}, f, indent=2)
    title = (info or {}).get("title")
    plot = plot_before_after(before, after, os.path.join(output_dir, "before_after.png"), title=title)
    if plot is not None:
        paths["plot"] = plot
    return paths
