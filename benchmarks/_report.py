"""Statistics, machine info and the output side of the benchmarks: the command line a result records, its output
directory, the JSON + Markdown files, the per-phase Markdown table and matplotlib for the plots."""

import argparse
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile

from benchmarks._bench import REPO_DIR, SPLIT_KEYS

DEFAULT_OUT = os.path.join(REPO_DIR, "docs", "benchmarks")


# ------------------------------------------------------------------------------------------------- machine and stats
def machine_info():
    from importlib.metadata import version

    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    ram_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trl": version("trl"),
        "transformers": version("transformers"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": 1,
        "package_commit": package_commit(),
    }


def package_commit():
    """Commit of the repository the benchmark ran on, with '+dirty' when trl_powerflow/ had local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "trl_powerflow"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def median(values):
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if not values:
        return float("nan")
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def bootstrap_median_ci(values, n_boot=2000, level=0.95, seed=0):
    """Percentile bootstrap interval of the median."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        m = median(values)
        return (m, m)
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(values, k=len(values))) for _ in range(n_boot))
    lo = meds[int((1 - level) / 2 * n_boot)]
    hi = meds[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return (lo, hi)


def ratio_summary(num, den):
    """Median of paired ratios num[k] / den[k] with a bootstrap interval."""
    ratios = [a / b for a, b in zip(num, den) if a is not None and b]
    lo, hi = bootstrap_median_ci(ratios)
    return {"median": median(ratios), "ci95": [lo, hi], "n": len(ratios)}


def pooled(records, key, warmup):
    """{arm: [records]} -> {arm: the values of `key` over every record's timed rounds (after `warmup`)}."""
    return {a: [x for rec in recs for x in rec[key][warmup:]] for a, recs in records.items()}


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


# ------------------------------------------------------------------------------------------------------- the output
def parser(doc, quick_help=None):
    """The argument parser of a benchmark, `doc` (its module docstring) as the description; with `quick_help`, its
    --quick and --out options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick_help:
        parser.add_argument("--quick", action="store_true", help=quick_help)
        add_out_option(parser)
    return parser


def add_out_option(parser):
    parser.add_argument("--out", default=None, help=f"output directory (default {DEFAULT_OUT}; --quick: a temp dir)")


def add_arm_options(parser, arms_help):
    """--arms, --seed and --device (auto: cuda when torch sees a GPU)."""
    parser.add_argument("--arms", nargs="*", default=None, help=arms_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def add_settings_options(parser):
    """--repeats, --steps and --warmup of the interleaved benchmarks (None: the mode's own); see `overridden`."""
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per arm per repeat")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps per arm per repeat")


def overridden(settings, args):
    """`settings` (repeats, warmup, steps) with the ones given on the command line."""
    return {key: value if getattr(args, key) is None else getattr(args, key) for key, value in settings.items()}


def command_line(module, argv):
    """The command that ran, as a result records it: `python -m benchmarks.<module> ARGS`."""
    args = " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    return f"python -m benchmarks.{module} {args}".strip()


def output_dir(out, name, temp):
    """`out`, else a fresh temp dir when `temp` (a --quick run), else docs/benchmarks/; created."""
    out = out or (tempfile.mkdtemp(prefix=f"{name}_") if temp else DEFAULT_OUT)
    os.makedirs(out, exist_ok=True)
    return out


def write_json(out_dir, name, result):
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return path


def write_results(out_dir, name, result, md):
    """Write <out_dir>/<name>.json and <name>.md, and print the Markdown; returns the JSON's path."""
    path = write_json(out_dir, name, result)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(md)
    print(md)
    return path


def split_table(heading, columns, rows):
    """Markdown lines: `heading`, then a table of `columns` + the phases + total, one row per (cells, split_s,
    total_s), in ms."""
    lines = [
        "",
        heading,
        "",
        "| " + " | ".join(columns) + " | " + " | ".join(SPLIT_KEYS) + " | total |",
        "|" + "---|" * (len(columns) + len(SPLIT_KEYS) + 1),
    ]
    for cells, split, total in rows:
        lines.append(
            "| "
            + " | ".join(cells)
            + " | "
            + " | ".join(fmt(1000 * split[k], 1) for k in SPLIT_KEYS)
            + f" | {fmt(1000 * total, 1)} |"
        )
    return lines


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (said on stderr) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    return plt
