"""`trl-powerflow make-tiny-model`: build a tiny random causal LM + byte-level BPE tokenizer offline and save both to
a directory (`trl_powerflow.toys.tiny_models.save_tiny_model`); prints the directory.

    trl-powerflow make-tiny-model --output_dir /tmp/tiny-qwen2 [--arch qwen2|llama] [--hidden_size 32]
"""

from __future__ import annotations

import argparse


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from trl_powerflow.toys.tiny_models import ARCHS

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--arch", choices=ARCHS, default="qwen2")
    parser.add_argument("--hidden_size", type=int, default=32)
    parser.add_argument("--num_hidden_layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None, prog: str | None = None) -> str:
    from trl_powerflow.toys.tiny_models import save_tiny_model

    args = make_parser(prog).parse_args(argv)
    path = save_tiny_model(
        args.output_dir,
        arch=args.arch,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        seed=args.seed,
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
