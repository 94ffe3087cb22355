r"""`trl-powerflow experiment`: the small-scale experiment of docs/experiment: pretrain the tiny bases, compare every
method, write the results (`trl_powerflow.experiments.small_scale`; `python scripts/run_experiment.py` is the same).

    OMP_NUM_THREADS=1 trl-powerflow experiment --output_dir outputs/experiment --docs_dir docs/experiment

1. Reasoning: `trl-powerflow pretrain-base --task reasoning` pretrains a tiny Qwen2 on noisy worked solutions of the
   digit-chain task (`trl_powerflow.experiments.synthetic_tasks`); `trl-powerflow compare` then trains base /
   supervised GRPO / Intuitor / entropy minimisation / TTRL / EMPO / PowerFlow (alpha 4 and 0.5, -traj and -token
   ablations) from it with one shared recipe and budget, and evaluates every checkpoint on held-out problems.
2. Creative: `--task creative` pretrains a diverse base on rhyming couplets and an over-sharpened "aligned" model
   from it; `compare` starts every method from the aligned model (PowerFlow alpha 0.5 and 2, GRPO with the
   poem-quality reward, Intuitor, entropy minimisation) and also evaluates the pre-alignment base as a reference.
3. Copies each comparison's results.md / results.json / plots to `--docs_dir`/{reasoning,creative}/ and writes
   `--docs_dir`/results.md with both tables, the base models' statistics, the command and the wall times.

Every stage is seeded; finished stages are reused on a re-run (pass --force to redo them). `--quick` shrinks every
stage to a smoke run (minutes) and writes nothing to the docs unless --docs_dir is given.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/experiment")
    parser.add_argument("--docs_dir", default=None, help="Where to copy tables and plots (e.g. docs/experiment).")
    parser.add_argument("--tasks", nargs="+", default=["reasoning", "creative"], choices=["reasoning", "creative"])
    parser.add_argument("--reasoning_steps", type=int, default=100, help="RL steps per method (reasoning).")
    parser.add_argument("--creative_steps", type=int, default=60, help="RL steps per method (creative).")
    parser.add_argument("--eval_every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="Redo finished stages.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: tiny pretraining, 2 RL steps, 2 methods.")
    return parser


def parse_args(argv=None, prog: str | None = None):
    return make_parser(prog).parse_args(argv)


def main(argv=None, prog: str | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    from trl_powerflow.experiments.small_scale import run_experiment

    command = f"OMP_NUM_THREADS=1 {prog or 'python scripts/run_experiment.py'} {shlex.join(argv)}"
    return run_experiment(args, command)


if __name__ == "__main__":
    main()
