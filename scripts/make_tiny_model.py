"""Build a tiny random causal LM + byte-level BPE tokenizer offline and save both to a directory.

python scripts/make_tiny_model.py --output_dir /tmp/tiny-qwen2 [--arch qwen2|llama] [--hidden_size 32]
"""

import argparse

from trl_powerflow.toys.tiny_models import ARCHS, save_tiny_model


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--arch", choices=ARCHS, default="qwen2")
    parser.add_argument("--hidden_size", type=int, default=32)
    parser.add_argument("--num_hidden_layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
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
