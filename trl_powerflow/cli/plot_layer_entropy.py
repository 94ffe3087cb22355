r"""`trl-powerflow plot-layer-entropy`: plot the entropy of each internal layer policy over training (logged by
`LayerEntropyCallback`; `trl-powerflow train --layer_entropy_every N` installs it).

Each `--run` is `PATH` or `NAME=PATH`, where PATH is a trainer output / checkpoint directory holding
`trainer_state.json`, a `trainer_state.json` file, a JSON list of log entries (`state.log_history`) or a JSON object
with a `log_history` key (as written by `trl-powerflow bupo-compare`). One panel per run, one line per layer
(`layer_entropy/{l}`, l = 0 embeddings .. L final layer), on a shared y axis; dashed vertical lines mark
`--mark STEP` (e.g. the BuPO switch step). (`python scripts/plot_layer_entropy.py` is the same command.)

    trl-powerflow plot-layer-entropy --run outputs/powerflow-tiny --output outputs/layer_entropy.png
    trl-powerflow plot-layer-entropy --run base=a.json --run bupo=b.json --mark 5 --output cmp.png
"""

from __future__ import annotations

import argparse
import os


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", required=True, help="PATH or NAME=PATH (repeatable).")
    parser.add_argument("--output", required=True, help="Image file to write (.png, .pdf, .svg).")
    parser.add_argument("--mark", type=int, action="append", default=[], help="Step to mark (repeatable).")
    parser.add_argument("--title", default="Entropy of the internal layer policies (logit lens)")
    return parser


def parse_args(argv=None, prog: str | None = None):
    return make_parser(prog).parse_args(argv)


def main(argv=None, prog: str | None = None) -> str:
    args = parse_args(argv, prog)
    from trl_powerflow.bupo.plots import load_log_history, plot_layer_entropy

    runs = {}
    for spec in args.run:
        name, path = spec.split("=", 1) if "=" in spec and not os.path.exists(spec) else (None, spec)
        runs[name or os.path.basename(os.path.normpath(path))] = load_log_history(path)
    path = plot_layer_entropy(runs, args.output, args.mark, args.title)
    print(f"Wrote {path}")
    return path


if __name__ == "__main__":
    main()
