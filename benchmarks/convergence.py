"""Convergence cost on the enumerable toy: steps and training seconds to reach a given exact KL.

PowerFlowTrainer is trained through its public API on the toy of `trl_powerflow/toys/enumerable.py` (prompt "q",
vocabulary {<eos>, a, b, q}, max_completion_length 3: 40 completions, all probabilities exact). Every `--eval-every`
steps a callback computes the exact KL(pi_theta || pi*) to the fixed point pi* of the objective being trained:

  la_tb    pi*(y) = p_base(y)^alpha exp(-lambda |y|), lambda the root of sum_y p_base^alpha exp(-lambda |y|) = 1
  tb_traj, la_tb_exact, token_balance  pi*(y) = p_base(y)^alpha / sum_y' p_base(y')^alpha

for the learned head vs the group (no-head) log Z estimate, and LA-TB vs TB-traj, la_tb_exact and token_balance
(alpha = 2 by default); the plot shows each objective's KL to its own fixed point and to the pure alpha-power.
Reported:
steps and training seconds (sum of step times, evaluation excluded) until KL <= frac * KL_start, per seed and the
median over seeds. The KL evaluation runs outside the timed region.

    python -m benchmarks.convergence           # 6 configs x 5 seeds x 300 steps (about 2 min on 2 CPU cores)
    python -m benchmarks.convergence --quick   # CI smoke run
"""

import os
import sys
import tempfile
import time

from benchmarks import _bench, _report
from benchmarks._report import fmt, median
from trl_powerflow.toys.objective_curves import MAX_LENGTH

CONFIGS = [
    ("la_tb", "head"),
    ("la_tb", "group"),
    ("tb_traj", "head"),
    ("tb_traj", "group"),
    ("la_tb_exact", "head"),
    ("token_balance", "head"),
]


def run_one(objective, estimator, seed, args, model_dir, out_dir):
    from trl_powerflow.toys.objective_curves import train_objective_on_toy

    curve = train_objective_on_toy(
        model_dir, out_dir, objective, estimator=estimator, seed=seed, alpha=args.alpha, steps=args.steps,
        learning_rate=args.lr, log_z_learning_rate=args.log_z_lr, group=16, eval_every=args.eval_every,
    )["curve"]  # fmt: skip
    kl0 = curve[0]["kl"]
    reach = {}
    for frac in args.fracs:
        hit = next((c for c in curve if c["kl"] <= frac * kl0), None)
        reach[str(frac)] = {"step": hit["step"], "train_s": hit["train_s"]} if hit else None
    total_s = curve[-1]["train_s"]
    return {
        "objective": objective,
        "estimator": estimator,
        "seed": seed,
        "kl_start": kl0,
        "kl_end": curve[-1]["kl"],
        "kl_to_power_end": curve[-1]["kl_to_power"],
        "s_per_step": total_s / max(curve[-1]["step"], 1),
        "reach": reach,
        "curve": curve,
    }


def summarize(runs, fracs):
    out = {}
    for objective, estimator in CONFIGS:
        rs = [r for r in runs if r["objective"] == objective and r["estimator"] == estimator]
        if not rs:
            continue
        entry = {
            "kl_start": median([r["kl_start"] for r in rs]),
            "kl_end": median([r["kl_end"] for r in rs]),
            "kl_to_power_end": median([r["kl_to_power_end"] for r in rs]),
            "s_per_step": median([r["s_per_step"] for r in rs]),
            "reach": {},
        }
        for frac in fracs:
            hits = [r["reach"][str(frac)] for r in rs]
            reached = [h for h in hits if h]
            # A seed that never reaches the threshold counts as +inf, so the median is finite only when more than
            # half of the seeds reached it.
            inf = float("inf")
            med_step = median([h["step"] if h else inf for h in hits])
            med_s = median([h["train_s"] if h else inf for h in hits])
            entry["reach"][str(frac)] = {
                "reached": f"{len(reached)}/{len(hits)}",
                "median_step": med_step if med_step != inf else None,
                "median_train_s": med_s if med_s != inf else None,
                "per_seed_steps": [h["step"] if h else None for h in hits],
            }
        out[f"{objective}/{estimator}"] = entry
    return out


def markdown(result):
    s = result["meta"]
    lines = [
        "## Convergence cost on the enumerable toy",
        "",
        f"Command: `{s['command']}`",
        "",
        f"Toy: 40 completions (max_completion_length {MAX_LENGTH}), alpha = {s['alpha']}, G = 16 = batch, lr "
        f"{s['lr']} (head lr {s['log_z_lr']}), constant schedule, {s['steps']} steps, seeds {s['seeds']}, exact KL "
        f"every {s['eval_every']} steps. KL is to each objective's own fixed point; 'KL to p^a' is the final KL to "
        "the pure alpha-power distribution (the LA-TB length tilt makes it non-zero by design).",
        "",
        "| objective / log Z | KL start | "
        + " | ".join(f"steps to {f} KL0 | s to {f} KL0" for f in s["fracs"])
        + " | s/step | KL end | KL to p^a end |",
        "|---|---|" + "---|---|" * len(s["fracs"]) + "---|---|---|",
    ]
    for key, e in result["summary"].items():
        cells = []
        for f in s["fracs"]:
            r = e["reach"][str(f)]
            cells.append(f"{fmt(r['median_step'], 0)} ({r['reached']}) | {fmt(r['median_train_s'], 2)}")
        lines.append(
            f"| {key} | {fmt(e['kl_start'], 4)} | "
            + " | ".join(cells)
            + f" | {fmt(e['s_per_step'], 4)} | {fmt(e['kl_end'], 4)} | {fmt(e['kl_to_power_end'], 4)} |"
        )
    lines += ["", "Steps are medians over seeds (seeds that reached the threshold / all); per seed:", ""]
    for key, e in result["summary"].items():
        per = "; ".join(f"{f}: {e['reach'][str(f)]['per_seed_steps']}" for f in s["fracs"])
        lines.append(f"- {key}: {per}")
    return "\n".join(lines) + "\n"


def plot(result, out_dir):
    plt = _report.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {f"{o}/{e}": f"C{i}" for i, (o, e) in enumerate(CONFIGS)}
    for key in colors:
        runs = [r for r in result["runs"] if f"{r['objective']}/{r['estimator']}" == key]
        for i, r in enumerate(runs):
            steps = [c["step"] for c in r["curve"]]
            kl = [max(c["kl"], 1e-6) for c in r["curve"]]
            kl_power = [max(c["kl_to_power"], 1e-6) for c in r["curve"]]
            label = key if i == 0 else None
            axes[0].plot(steps, kl, color=colors[key], alpha=0.8, lw=1, label=label)
            axes[1].plot(steps, kl_power, color=colors[key], alpha=0.8, lw=1, label=label)
    for ax, yl in zip(axes, ["exact KL(pi || own fixed point)", "exact KL(pi || p^alpha / Z), the pure power"]):
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Enumerable toy, alpha = {result['meta']['alpha']}: one line per seed")
    fig.tight_layout()
    path = os.path.join(out_dir, "convergence.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = _report.parser(__doc__, quick_help="CI smoke run: 1 seed, 6 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--log-z-lr", type=float, default=5e-2)
    parser.add_argument("--fracs", type=float, nargs="*", default=[0.3, 0.1, 0.03])
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 300)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    args.eval_every = args.eval_every or (3 if args.quick else 1)

    torch = _bench.set_single_thread()
    from trl_powerflow.toys.enumerable import save_toy_model

    out_dir = _report.output_dir(args.out, "convergence", temp=args.quick)
    work_dir = tempfile.mkdtemp(prefix="convergence_work_")
    model_dir = save_toy_model(os.path.join(work_dir, "toy"))
    result = {
        "meta": {
            "command": _report.command_line("convergence", argv),
            "machine": _report.machine_info(),
            "alpha": args.alpha,
            "lr": args.lr,
            "log_z_lr": args.log_z_lr,
            "steps": args.steps,
            "seeds": args.seeds,
            "eval_every": args.eval_every,
            "fracs": args.fracs,
            "max_completion_length": MAX_LENGTH,
            "torch_threads": torch.get_num_threads(),
        },
        "runs": [],
    }
    t_start = time.perf_counter()
    for i, seed in enumerate(args.seeds):
        order = CONFIGS[i % len(CONFIGS) :] + CONFIGS[: i % len(CONFIGS)]  # rotate the order across seeds
        for objective, estimator in order:
            t0 = time.perf_counter()
            run = run_one(objective, estimator, seed, args, model_dir, work_dir)
            result["runs"].append(run)
            print(
                f"  {objective}/{estimator} seed {seed}: KL {run['kl_start']:.4f} -> {run['kl_end']:.4f} "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
    result["summary"] = summarize(result["runs"], args.fracs)
    result["meta"]["wall_time_s"] = time.perf_counter() - t_start
    _report.write_results(out_dir, "convergence", result, markdown(result))
    if not args.no_plot and not args.quick:
        plot(result, out_dir)
    return result


if __name__ == "__main__":
    main()
