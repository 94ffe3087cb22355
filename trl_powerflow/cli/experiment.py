r"""`trl-powerflow experiment`: the small-scale experiment of docs/experiment, one command that regenerates it
(`trl_powerflow.experiments.small_scale`; `python scripts/run_experiment.py` is the same).

    OMP_NUM_THREADS=1 trl-powerflow experiment --output_dir outputs/experiment --docs_dir docs/experiment

Stages (`--stages`, default all):

1. seeds: digit-chain reasoning from the shipped pretrained base (trl_powerflow/assets/digit_chain_base): supervised
   GRPO, TTRL, EMPO, Intuitor and PowerFlow alpha 4 under each objective (la_tb, la_tb_exact, token_balance)
   for 2N steps (constant learning rate; evaluated at N and 2N), every seed.
2. learning_rate: supervised GRPO and PowerFlow (defaults) at 3x the shared learning rate for N steps, every seed.
3. sweep: PowerFlow alpha 2, 8 on reasoning for N steps (alpha 4 and TTRL come from stage 1; alpha 1 is the base).
4. ablations: entropy minimisation, PowerFlow alpha 0.5, -traj and -token at N/2 steps.
5. creative: pretrain the rhyming-couplet base and its over-sharpened "aligned" model, then PowerFlow alpha 0.25, 0.5
   and 0.75 and the baselines (GRPO + quality checker, Intuitor, entropy minimisation) from the aligned model.
6. diagnosis: where the trained models put their probability mass (answers the base prefers, lengths, guesses).
7. power_sampling: MCMC power sampling of the base (alpha 4) against PowerFlow's one-pass sampler, by forward passes.
8. toy: the live target-distance estimate (powerflow/target_kl) against the exact KL on the enumerable toy.

Then the report: results.md, results.json and the plots in --output_dir/report and, with --docs_dir, there; it
states the machine and the wall time. `--jobs` (default 2) runs that many independent jobs side by side, one core
each (every seed is a job, in learning_rate too; so are the sweep, the ablations, creative and the in-process
stages; diagnosis waits for the seeds). Finished stages are reused on a re-run (pass --force to redo them).
`--quick` shrinks every stage to a smoke run (about two minutes on one thread) that still writes every table and
plot.
"""

from __future__ import annotations

import argparse
import shlex
import sys

STAGES = ("seeds", "learning_rate", "sweep", "ablations", "creative", "diagnosis", "power_sampling", "toy")


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default="outputs/experiment")
    parser.add_argument("--docs_dir", default=None, help="Where to write the report (e.g. docs/experiment).")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="Stages to run.")
    parser.add_argument(
        "--reasoning_steps", type=int, default=100, help="N: the reasoning budget (the seed runs train for 2N)."
    )
    parser.add_argument("--creative_steps", type=int, default=60, help="RL steps per method (creative).")
    parser.add_argument("--eval_every", type=int, default=20, help="Evaluation interval (ablations, creative).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the single-seed stages.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds of the reasoning comparison.")
    parser.add_argument(  # alpha 1 is not trained: it is the base, an exact fixed point (tests/test_alpha_one.py)
        "--alphas", type=float, nargs="+", default=[2.0, 8.0], help="Reasoning alpha sweep (alpha 1: the base)."
    )
    parser.add_argument(
        "--creative_alphas", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="Creative sweep (1: the base)."
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="Jobs run side by side (one core each; seeds and stages are independent)."
    )
    parser.add_argument("--no_report", action="store_true", help="Run the stages without writing the report.")
    parser.add_argument("--force", action="store_true", help="Redo finished stages.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: every stage tiny, every table and plot.")
    return parser


def parse_args(argv=None, prog: str | None = None):
    args = make_parser(prog).parse_args(argv)
    given = set(argv or sys.argv[1:])
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}.")
    if args.quick:  # two seeds (an interval needs two), one alpha of the sweep, unless asked otherwise
        args.seeds = args.seeds if "--seeds" in given else [0, 1]
        args.alphas = args.alphas if "--alphas" in given else [2.0]
    return args


def main(argv=None, prog: str | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    from trl_powerflow.experiments.evidence import run_experiment

    command = f"OMP_NUM_THREADS=1 {prog or 'python scripts/run_experiment.py'} {shlex.join(argv)}"
    return run_experiment(args, command)


if __name__ == "__main__":
    main()
