"""Plots of the internal layer policies: the entropy of each layer's policy over training (`layer_entropy/{l}`, logged
by `LayerEntropyCallback`), read from a run's log history (`trl-powerflow plot-layer-entropy`)."""

from __future__ import annotations

import json
import os


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


def plot_layer_entropy(runs: dict[str, list[dict]], output: str, marks=(), title: str = "") -> str:
    """One panel per run ({name: log history}), one line per layer (0 = embeddings .. L = the final layer) on a shared
    y axis; dashed vertical lines at the steps of `marks` (e.g. the BuPO switch step). Writes `output`, returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .logit_lens import entropy_history

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
