r"""`trl-powerflow bupo-compare`: with and without BuPO, in the same harness (same model, data, recipe, seed, logging
and evaluation; `trl_powerflow.experiments.bupo_compare`).

For each trainer (`--trainers powerflow grpo`) it runs the recipe twice with `BuPOPowerFlowTrainer` /
`BuPOGRPOTrainer`: once with `bupo_layer=None` (the plain trainer) and once with `bupo_layer=k, bupo_steps=N`. Every
run logs the per-layer entropies of the internal policies on a fixed probe set and is evaluated by sampling (as
`trl-powerflow evaluate`). It writes `<output_dir>/results.json`, `summary.md` (printed), `loss.png` and
`layer_entropy.png`. (`python scripts/bupo_compare.py` is the same command.)

    trl-powerflow bupo-compare --output_dir outputs/bupo_compare                 # embedded tiny model, 4 layers
    trl-powerflow bupo-compare --model outputs/experiment/reasoning/base \
        --dataset outputs/experiment/reasoning/train.jsonl --eval_dataset outputs/experiment/reasoning/eval.jsonl \
        --grpo_rewards accuracy --output_dir outputs/bupo_compare_reasoning

Defaults come from `--config` (default `scripts/recipes/tiny_cpu.yaml`); the flags below override them.

`--toy` runs the comparison on the enumerable toy instead (PowerFlow only, 2-layer toy model, prompt "q", 40
completions): there the exact KL from the policy to the LA-TB fixed point is computed every `--toy_eval_every` steps,
so the effect of BuPO on convergence is measured exactly (`toy_results.json`, `toy_summary.md`, `toy_kl.png`).

    trl-powerflow bupo-compare --toy --output_dir outputs/bupo_compare_toy
"""

from __future__ import annotations

import argparse
import sys

from trl_powerflow.experiments.compare import default_recipe


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=default_recipe(), help="Recipe of every run (default: tiny_cpu.yaml).")
    parser.add_argument("--output_dir", default="outputs/bupo_compare")
    parser.add_argument("--model", default=None, help="Model directory (default: embedded tiny model).")
    parser.add_argument("--num_layers", type=int, default=4, help="Layers of the embedded tiny model.")
    parser.add_argument("--dataset", default=None, help="Training prompts (file/dir/hub id; default: embedded).")
    parser.add_argument("--eval_dataset", default=None, help="Evaluation prompts (default: embedded, seed 1).")
    parser.add_argument("--trainers", nargs="+", default=["powerflow", "grpo"], choices=["powerflow", "grpo"])
    parser.add_argument("--grpo_rewards", nargs="+", default=["entropy_minimisation"], help="GRPO reward names.")
    parser.add_argument("--bupo_layer", type=int, default=None, help="Default: half the layers.")
    parser.add_argument("--bupo_steps", type=int, default=None, help="Default: a quarter of max_steps.")
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--max_completion_length", type=int, default=None)
    parser.add_argument("--per_device_train_batch_size", type=int, default=None)
    parser.add_argument("--entropy_every", type=int, default=2, help="Measure layer entropies every this many steps.")
    parser.add_argument("--probe_prompts", type=int, default=4)
    parser.add_argument("--eval_prompts", type=int, default=16)
    parser.add_argument("--eval_samples", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Training seeds (results: mean, min-max).")
    parser.add_argument("--save_models", action="store_true", help="Save each trained model in <output_dir>/<run>.")
    parser.add_argument("--toy", action="store_true", help="Exact comparison on the enumerable toy (PowerFlow).")
    parser.add_argument("--toy_alpha", type=float, default=2.0)
    parser.add_argument("--toy_steps", type=int, default=300)
    parser.add_argument("--toy_eval_every", type=int, default=25)
    parser.add_argument("--toy_seeds", type=int, nargs="+", default=[0, 1, 2])
    return parser


def parse_args(argv=None, prog: str | None = None):
    return make_parser(prog).parse_args(argv)


def main(argv=None, prog: str | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    from trl_powerflow.experiments.bupo_compare import run_bupo_comparison

    return run_bupo_comparison(args, command=f"{prog or 'python scripts/bupo_compare.py'} {' '.join(argv)}")


if __name__ == "__main__":
    main()
