"""The `trl-powerflow` command: `trl-powerflow <command> [options]`, one module of this package per command.

    trl-powerflow train --config scripts/recipes/tiny_cpu.yaml
    trl-powerflow evaluate --model outputs/powerflow-tiny --num_samples 8
    trl-powerflow <command> --help

`python -m trl_powerflow ...` is the same command, and `python scripts/<name>.py ...` (thin shims over these modules)
still works. Each command module has `make_parser()` and `main(argv=None)`; this dispatcher imports only the module of
the command it runs, so `trl-powerflow --help` starts fast.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# command -> (module in trl_powerflow.cli, one line for `trl-powerflow --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "Train with PowerFlow or GRPO (or their BuPO variants) from a YAML recipe and flags."),
    "evaluate": ("evaluate", "Evaluate checkpoints by sampling (avg@k, pass@k, length, diversity; paper benchmarks)."),
    "compare": ("compare", "Same-harness comparison: base, GRPO baselines and PowerFlow trained and evaluated alike."),
    "bupo-compare": ("bupo_compare", "With and without BuPO in the same harness (or exactly on the enumerable toy)."),
    "experiment": ("experiment", "The small-scale experiment of docs/experiment: multi-seed runs, sweeps, report."),
    "pretrain-base": ("pretrain_base", "Pretrain the tiny digit-chain (or rhyming-couplet) base models offline."),
    "make-tiny-model": ("make_tiny_model", "Build a tiny random causal LM and its tokenizer offline."),
    "plot-layer-entropy": ("plot_layer_entropy", "Plot the per-layer policy entropy logged by LayerEntropyCallback."),
    "power-sampling": ("power_sampling", "Power sampling against one-pass sampling (harness, or exactly on the toy)."),
}
PROG = "trl-powerflow"
# What the commands raise for a bad input (data, recipe, option, model, checkpoint), reported as one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, TypeError)


def format_help() -> str:
    from trl_powerflow import __version__

    width = max(len(name) for name in COMMANDS) + 2
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        f"PowerFlow for TRL {__version__}: label-free fine-tuning towards the alpha-power of the base model.",
        "",
        "commands:",
        *(f"  {name:<{width}}{summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "options:",
        f"  {'-h, --help':<{width}}show this message and exit",
        f"  {'--version':<{width}}show the version and exit",
        f"  {'--debug':<{width}}(after the command) show the traceback of an error instead of one line",
        "",
        f"`{PROG} <command> --help` lists a command's options. `python -m trl_powerflow <command>` is the same, and",
        "`python scripts/<name>.py` still works (scripts/train.py is `trl-powerflow train`, scripts/run_experiment.py",
        "`experiment`, scripts/pretrain_tiny_base.py `pretrain-base`, the others by their name).",
    ]
    return "\n".join(lines) + "\n"


def command_module(name: str):
    """The module of command `name` (imported now)."""
    return importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")


def main(argv: list[str] | None = None) -> int:
    """Run `trl-powerflow <command> ...`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(format_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        from trl_powerflow import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        sys.stderr.write(
            f"{PROG}: unknown command {name!r}.{hint} Commands: {', '.join(COMMANDS)} "
            f"(`{PROG} --help` describes them).\n"
        )
        return 2
    debug = "--debug" in rest
    rest = [arg for arg in rest if arg != "--debug"]
    module = command_module(name)
    try:
        module.main(rest, prog=f"{PROG} {name}")
    except USER_ERRORS as error:  # a bad input: one line (`--debug` shows the traceback)
        if debug:
            raise
        sys.stderr.write(f"{PROG} {name}: error: {error} (--debug shows the traceback)\n")
        return 2
    if hasattr(module, "finish"):
        module.finish()
    return 0
