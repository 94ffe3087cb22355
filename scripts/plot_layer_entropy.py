#!/usr/bin/env python
r"""Plot the entropy of each internal layer policy over training (logged by `LayerEntropyCallback`).

Each `--run` is `PATH` or `NAME=PATH`, where PATH is a trainer output / checkpoint directory holding
`trainer_state.json`, a `trainer_state.json` file, a JSON list of log entries (`state.log_history`) or a JSON object
with a `log_history` key (as written by `scripts/bupo_compare.py`). One panel per run, one line per layer
(`layer_entropy/{l}`, l = 0 embeddings .. L final layer), on a shared y axis; dashed vertical lines mark
`--mark STEP` (e.g. the BuPO switch step).

    python scripts/plot_layer_entropy.py --run outputs/powerflow-tiny --output outputs/layer_entropy.png
    python scripts/plot_layer_entropy.py --run base=a.json --run bupo=b.json --mark 5 --output cmp.png
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="PATH or NAME=PATH (repeatable).")
    parser.add_argument("--output", required=True, help="Image file to write (.png, .pdf, .svg).")
    parser.add_argument("--mark", type=int, action="append", default=[], help="Step to mark (repeatable).")
    parser.add_argument("--title", default="Entropy of the internal layer policies (logit lens)")
    return parser.parse_args(argv)


def load_log_history(path: str) -> list[dict]:
    """`state.log_history` from a run directory, a trainer_state.json, a JSON list, or {"log_history": [...]}."""
    if os.path.isdir(path):
        candidate = os.path.join(path, "trainer_state.json")
        if not os.path.isfile(candidate):
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(path)
            if checkpoint is None:
                raise FileNotFoundError(f"{path} holds no trainer_state.json and no checkpoint.")
            candidate = os.path.join(checkpoint, "trainer_state.json")
        path = candidate
    with open(path) as f:
        data = json.load(f)
    history = data.get("log_history") if isinstance(data, dict) else data
    if not isinstance(history, list):
        raise ValueError(f"{path} holds no log history.")
    return history


def plot(runs: dict[str, list[dict]], output: str, marks=(), title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trl_powerflow.bupo.logit_lens import entropy_history

    series = {name: entropy_history(history) for name, history in runs.items()}
    empty = [name for name, (steps, _) in series.items() if not steps]
    if empty:
        raise ValueError(f"No layer_entropy/* entries in run(s) {empty}: was LayerEntropyCallback used?")
    num_layers = max(max(layers) for _, layers in series.values())
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), sharey=True, squeeze=False)
    for ax, (name, (steps, layers)) in zip(axes[0], series.items()):
        for layer, values in layers.items():
            label = "emb" if layer == 0 else (f"L{layer} (final)" if layer == num_layers else f"L{layer}")
            ax.plot(steps, values, marker="o", ms=2.5, lw=1.2, color=cmap(layer / max(num_layers, 1)), label=label)
        for step in marks:
            ax.axvline(step, color="grey", ls="--", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean entropy (nats)")
    axes[0][-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def main(argv=None):
    args = parse_args(argv)
    runs = {}
    for spec in args.run:
        name, path = spec.split("=", 1) if "=" in spec and not os.path.exists(spec) else (None, spec)
        runs[name or os.path.basename(os.path.normpath(path))] = load_log_history(path)
    path = plot(runs, args.output, args.mark, args.title)
    print(f"Wrote {path}")
    return path


if __name__ == "__main__":
    main()
