r"""`trl-powerflow pretrain-base`: pretrain the tiny base models of the small-scale experiment (and the digit-chain
demo's base), offline and deterministically (`trl_powerflow.experiments.pretraining`; `python
scripts/pretrain_tiny_base.py` is the same command).

    trl-powerflow pretrain-base --task reasoning --output_dir outputs/experiment/reasoning
    trl-powerflow pretrain-base --task creative --output_dir outputs/experiment/creative

`--task reasoning` trains a tiny Qwen2 (the package's offline tokenizer) on noisy worked solutions of the digit-chain
task of `trl_powerflow.experiments.synthetic_tasks` (each step wrong with probability 0.2, a quarter of the solutions
are bare guesses), so that the right answer is the model's mode but far from certain. It writes:

    <output_dir>/base/          the pretrained model + tokenizer (loadable with from_pretrained)
    <output_dir>/train.jsonl    RL training prompts with reference answers ("prompt", "answer")
    <output_dir>/eval.jsonl     held-out evaluation prompts (never seen in pretraining or RL)
    <output_dir>/pretrain.json  settings, losses, time, and a sampled evaluation of the model(s)

`--task creative` trains the same architecture on diverse rhyming couplets (20% flawed), saves it as `base/`, then
fine-tunes it further on an over-sharpened, always-valid corpus and saves that as `aligned/`: a model that has lost
the diversity its base had. Causal-LM loss on the completion tokens only; prompts go through the chat template exactly
as the trainers format them. Everything is seeded: the same command rebuilds the same models.
"""

from __future__ import annotations

import argparse

from trl_powerflow.experiments.pretraining import TASKS


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument(
        "--steps", type=int, default=None, help="Pretraining steps (default: 1000 reasoning, 500 creative)."
    )
    parser.add_argument(
        "--aligned_steps", type=int, default=100, help="Creative: fine-tuning steps of the aligned model."
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--aligned_learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train_prompts", type=int, default=256, help="Reasoning: RL training prompts.")
    parser.add_argument("--num_eval_prompts", type=int, default=64, help="Reasoning: evaluation prompts.")
    parser.add_argument("--eval_samples", type=int, default=8, help="Samples per prompt of the final check.")
    parser.add_argument("--skip_eval", action="store_true", help="Do not sample-evaluate the saved model(s).")
    parser.add_argument("--force", action="store_true", help="Retrain even if the output directory is complete.")
    return parser


def parse_args(argv=None, prog: str | None = None):
    return make_parser(prog).parse_args(argv)


def main(argv=None, prog: str | None = None) -> str:
    args = parse_args(argv, prog)
    from trl_powerflow.experiments.pretraining import pretrain_base

    return pretrain_base(args)


if __name__ == "__main__":
    main()
