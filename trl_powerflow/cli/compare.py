r"""`trl-powerflow compare`: base / supervised GRPO / RLIF baselines / PowerFlow, trained and evaluated alike.

Every method trains the same starting model on the same prompts with the same recipe (generation settings, batch,
learning rate, seed and step budget) through `trl-powerflow train`; only the trainer and its reward (or alpha /
objective) differ. Every `--eval_every` steps a checkpoint is saved and evaluated by sampling (same prompts, samples,
temperature and seed for every method). Outputs in `--output_dir`: results.json, results.md (tables and the command),
accuracy_vs_step.png, length_vs_step.png, quality_vs_diversity.png and runs/<method>/ (checkpoints, train.log; reused
on a re-run, --force redoes). The harness: `trl_powerflow.experiments.compare`.

Methods (`--methods`, default all; add your own with `--method NAME="TRAINER FLAGS..."`):

    base                 the starting model, not trained
    grpo_accuracy        GRPO with the verifier reward (`accuracy`, uses the labels: supervised reference)
    intuitor             GRPO with self-certainty (Intuitor)
    entropy_min          GRPO with minus the mean token entropy (RENT / EM-RL)
    ttrl                 GRPO with the majority-vote reward (TTRL)
    empo                 GRPO with the semantic-entropy cluster reward (EMPO)
    powerflow            PowerFlow, alpha = --alpha_high (LA-TB)
    powerflow_low_alpha  PowerFlow, alpha = --alpha_low (flattening)
    powerflow_tb_traj    PowerFlow, alpha = --alpha_high, plain trajectory balance (ablation)
    powerflow_tb_token   PowerFlow, alpha = --alpha_high, token-level target only (ablation)

Example (the embedded tiny model and arithmetic prompts when no model / data are given; `python scripts/compare.py`
is the same command)::

    trl-powerflow compare --model_name_or_path my-model --dataset_name train.jsonl --eval_dataset eval.jsonl \
        --config scripts/recipes/tiny_cpu.yaml --max_steps 100 --eval_every 25 --output_dir outputs/compare
    trl-powerflow compare --quick --output_dir /tmp/compare       # CI smoke run: 2 steps, tiny evaluation
"""

from __future__ import annotations

import argparse
import shlex
import sys

from trl_powerflow.experiments.compare import QUICK_TRAIN_ARGS, default_recipe


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--model_name_or_path", default=None, help="Starting model (default: embedded tiny model).")
    parser.add_argument("--dataset_name", default=None, help="Training prompts (default: embedded).")
    parser.add_argument(
        "--eval_dataset", default=None, help="Evaluation prompts: a file, datasets dir or hub id (default: embedded)."
    )
    parser.add_argument("--eval_split", default="train", help="Split of --eval_dataset (files have only 'train').")
    parser.add_argument("--config", default=default_recipe(), help="Shared `train` recipe for every method.")
    parser.add_argument("--prompt_column", default="prompt", help="Prompt column (training and evaluation data).")
    parser.add_argument(
        "--answer_column",
        default="answer",
        help="Reference answers of the evaluation data (the training `accuracy` reward reads the column 'answer').",
    )
    parser.add_argument("--prompt_suffix", default=None, help="Appended to every prompt (training and evaluation).")
    parser.add_argument("--system_prompt", default=None, help="System message for every prompt (training and eval).")
    parser.add_argument("--prompt_as_chat", action="store_true", help="Wrap plain-text prompts in a user message.")
    parser.add_argument("--methods", nargs="+", default=None, help="Methods to run (default: all, in order).")
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        metavar='NAME="TRAINER FLAGS"',
        help='Add (or replace) a method, e.g. grpo_quality="grpo --reward_funcs pkg.mod:func"; TRAINER is grpo, '
        "powerflow or none (evaluate only; then --model_name_or_path PATH among the flags sets the model).",
    )
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--eval_every", type=int, default=0, help="Evaluate every N steps (0: only the final model).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha_high", type=float, default=4.0, help="alpha of powerflow and its ablations.")
    parser.add_argument("--alpha_low", type=float, default=0.5, help="alpha of powerflow_low_alpha.")
    parser.add_argument("--train_args", default="", help="Extra `train` flags for every method (one string).")
    parser.add_argument("--powerflow_args", default="", help="Extra `train` flags for the PowerFlow methods only.")
    parser.add_argument("--grpo_args", default="", help="Extra `train` flags for the GRPO methods only.")
    parser.add_argument("--num_samples", type=int, default=8, help="k samples per evaluation prompt.")
    parser.add_argument("--eval_max_prompts", type=int, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--eval_temperature", type=float, default=1.0)
    parser.add_argument("--eval_batch_size", type=int, default=16, help="Prompts per generate call.")
    parser.add_argument(
        "--embedder", default="auto", help="Semantic diversity: 'auto' (MiniLM if installed) or 'none'."
    )
    parser.add_argument(
        "--task_metrics", default=None, help="'module:function'(rows, completions) -> dict of extra metrics."
    )
    parser.add_argument("--quality_metric", default=None, help="Metric on the y axes (default: avg@k or quality).")
    parser.add_argument(
        "--diversity_metric", default=None, help="Metric on the x axis (default: semantic_diversity or distinct_2)."
    )
    parser.add_argument("--title", default=None, help="Title of the table and plots.")
    parser.add_argument("--in_process", action="store_true", help="Train in this process, not in a subprocess.")
    parser.add_argument("--force", action="store_true", help="Retrain methods whose results already exist.")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 2 steps, tiny evaluation.")
    return parser


def parse_args(argv=None, prog: str | None = None):
    parser = make_parser(prog)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_steps = min(args.max_steps, 2)
        args.eval_every = 1
        args.num_samples = 2
        args.eval_max_prompts = args.eval_max_prompts or 2
        args.max_new_tokens = 8
        args.embedder = "none"
        args.train_args = f"{QUICK_TRAIN_ARGS} {args.train_args}".strip()
        if args.methods is None:
            args.methods = ["base", "grpo_accuracy", "powerflow"]
    if args.max_steps < 1:
        parser.error("--max_steps must be >= 1")
    if args.eval_every < 0:
        parser.error("--eval_every must be >= 0")
    return args


def main(argv=None, prog: str | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    from trl_powerflow.experiments.compare import run_comparison

    return run_comparison(args, command=f"{prog or 'python scripts/compare.py'} {shlex.join(argv)}")


if __name__ == "__main__":
    main()
