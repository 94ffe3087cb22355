"""Step cost of PowerFlowTrainer against GRPOTrainer on the same config, and how it grows.

Arms (same tiny model, data, batch, generation settings and seed; completions forced to exactly
`max_completion_length` tokens with `min_new_tokens`, so every arm does the same work):

  powerflow    PowerFlowTrainer, label-free (its default: no reward function, no reward computed), learned head
  grpo_beta    GRPOTrainer, beta = 0.04 (also runs the frozen reference model's forward), cheap reward
  grpo_beta0   GRPOTrainer, beta = 0 (no reference forward), same cheap reward
  (optional: powerflow_shaped = PowerFlow with the same cheap reward as psi; powerflow_group = group log Z;
  powerflow_la_tb_exact, powerflow_token_balance = the other objectives, also timed against `powerflow`)

Arms run in separate processes, interleaved step by step with the order rotated every round (see `_bench`).
Reported per grid point: median step time per arm, the median of the per-round ratios with a bootstrap 95% interval,
peak RSS (VmHWM) per arm, CUDA peak when a GPU is used, completion tokens per second and where PowerFlow's step
time goes.

    python -m benchmarks.step_cost                 # default grid (about 10-15 min on 2 CPU cores)
    python -m benchmarks.step_cost --quick         # CI smoke run (one tiny point, a few seconds + start-up)
    python -m benchmarks.step_cost --full          # more repeats/steps, longer completions, checkpointing on/off
    python -m benchmarks.step_cost --points center # only some points (see --list)

Writes <out>/step_cost.json, <out>/step_cost.md and (with matplotlib) <out>/step_cost_scaling.png,
<out>/step_cost_split.png.
"""

import os
import sys
import tempfile
import time

from benchmarks import _arms, _bench, _report
from benchmarks._bench import SPLIT_KEYS
from benchmarks._report import fmt, median, pooled, ratio_summary

CENTER = {"model": "s", "completion_length": 64, "num_generations": 8, "prompts_per_step": 2}
MAIN_ARMS = ["powerflow", "grpo_beta", "grpo_beta0"]
TIME_TARGET = 1.00  # PowerFlow / GRPO(beta>0) step time with the defaults
TARGET_RATIO = 1.05  # each other objective / LA-TB step time, and peak RSS PowerFlow / GRPO(beta>0)
OBJECTIVE_ARMS = ("powerflow_la_tb_exact", "powerflow_token_balance")  # checked against `powerflow` (LA-TB)


def grid(mode):
    """Grid points: (name, axis, overrides of CENTER)."""
    if mode == "quick":
        return [("quick", "center", {"model": "xs", "completion_length": 8, "num_generations": 2})]
    lengths = [16, 32, 64, 128, 256] + ([512] if mode == "full" else [])
    gens = [2, 4, 8, 16]
    models = ["s", "m"]
    points = [("center", "center", {})]
    points += [(f"L={n}", "completion_length", {"completion_length": n}) for n in lengths if n != 64]
    points += [(f"G={g}", "num_generations", {"num_generations": g}) for g in gens if g != 8]
    points += [(f"model={m}", "model", {"model": m}) for m in models if m != "s"]
    if mode == "full":
        points += [("center+gc", "gradient_checkpointing", {"gradient_checkpointing": True})]
    return points


def settings_for(mode, args):
    s = {
        "quick": {"repeats": 1, "warmup": 1, "steps": 2},
        "default": {"repeats": 3, "warmup": 3, "steps": 12},
        "full": {"repeats": 4, "warmup": 3, "steps": 25},
    }[mode]
    return _report.overridden(s, args)


def run_point(name, overrides, arms, settings, cache_dir, work_dir, device, seed, pin_cpu):
    cfg = dict(CENTER)
    cfg.update(overrides)
    model_dir = _arms.model_dir_for(cfg["model"], cache_dir)
    records = {arm: [] for arm in arms}  # one record per repeat
    for r in range(settings["repeats"]):
        specs = _arms.arm_specs(
            arms,
            f"r{r}",
            model_dir,
            cfg,
            settings["warmup"],
            settings["steps"],
            seed=seed,
            device=device,
            gradient_checkpointing=cfg.get("gradient_checkpointing", False),
            pin_cpu=pin_cpu,
        )
        t0 = time.perf_counter()
        out = _bench.run_group(specs, os.path.join(work_dir, name.replace("=", "_"), f"r{r}"), rotation_offset=r)
        print(f"  {name} repeat {r + 1}/{settings['repeats']}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for arm in arms:
            records[arm].append(out[f"{arm}.r{r}"])
    return cfg, model_dir, summarize_point(records, settings["warmup"])


def summarize_point(records, warmup):
    """Pool the timed rounds of every repeat; ratios are per round (same round = steps seconds apart)."""
    arms = list(records)
    times, cpu = pooled(records, "step_time", warmup), pooled(records, "cpu_time", warmup)
    splits, tokens = pooled(records, "split", warmup), pooled(records, "completion_tokens", warmup)
    arm_out = {}
    for a in arms:
        med = median(times[a])
        lo, hi = _report.bootstrap_median_ci(times[a])
        tok = median(tokens[a])
        rss = [rec["peak_rss_kb"] / 1024 for rec in records[a] if rec.get("peak_rss_kb")]
        cuda = [rec["cuda_peak_bytes"] / 2**20 for rec in records[a] if rec.get("cuda_peak_bytes")]
        arm_out[a] = {
            "step_time_s": {"median": med, "ci95": [lo, hi], "n": len(times[a])},
            "step_times_s": times[a],
            "cpu_time_s": {"median": median(cpu[a])},
            "cpu_times_s": cpu[a],
            "completion_tokens_per_step": tok,
            "completion_tokens_per_s": tok / med if med else None,
            "peak_rss_mb": median(rss) if rss else None,
            "peak_rss_mb_per_repeat": rss,
            "cuda_peak_mb": median(cuda) if cuda else None,
            "split_s": {k: median([s[k] for s in splits[a]]) for k in SPLIT_KEYS},
            "split_share": {k: (sum(s[k] for s in splits[a]) / max(sum(times[a]), 1e-12)) for k in SPLIT_KEYS},
        }
    ratios, cpu_ratios = {}, {}
    pairs = [("powerflow", "grpo_beta"), ("powerflow", "grpo_beta0"), ("grpo_beta", "grpo_beta0")]
    pairs += [(a, "grpo_beta") for a in arms if a not in ("powerflow", "grpo_beta", "grpo_beta0")]
    pairs += [(a, "powerflow") for a in arms if a in OBJECTIVE_ARMS]  # each objective against LA-TB's step
    for num, den in pairs:
        if num in times and den in times:
            ratios[f"{num}/{den}"] = ratio_summary(times[num], times[den])
            cpu_ratios[f"{num}/{den}"] = ratio_summary(cpu[num], cpu[den])
    # Wall time is what a user pays; CPU time of the (single-threaded) arm is much less sensitive to other processes
    # on a shared machine, so it is reported beside it as a check.
    out = {"arms": arm_out, "ratios": ratios, "cpu_time_ratios": cpu_ratios}
    if "powerflow" in times and "grpo_beta0" in times:
        # What one extra forward of the frozen base model implies: PowerFlow's own base-forward time on top of
        # GRPO(beta=0)'s step, per round.
        base = [s["base_forward"] for s in splits["powerflow"]]
        implied = [1.0 + b / t for b, t in zip(base, times["grpo_beta0"]) if t]
        out["implied_one_forward_ratio"] = {
            "median": median(implied),
            "ci95": list(_report.bootstrap_median_ci(implied)),
        }
    if "powerflow" in arm_out and "grpo_beta" in arm_out and arm_out["grpo_beta"]["peak_rss_mb"]:
        out["rss_ratio_powerflow/grpo_beta"] = (
            arm_out["powerflow"]["peak_rss_mb"] / arm_out["grpo_beta"]["peak_rss_mb"]
        )
        pf_cuda, g_cuda = arm_out["powerflow"]["cuda_peak_mb"], arm_out["grpo_beta"]["cuda_peak_mb"]
        out["cuda_ratio_powerflow/grpo_beta"] = pf_cuda / g_cuda if pf_cuda and g_cuda else None
        out["rss_delta_mb_powerflow-grpo_beta"] = (
            arm_out["powerflow"]["peak_rss_mb"] - arm_out["grpo_beta"]["peak_rss_mb"]
        )
    out["targets"] = check_targets(out)
    return out


def check_targets(point):
    r = point["ratios"]
    t = {}
    if "powerflow/grpo_beta" in r:
        m, (lo, hi) = r["powerflow/grpo_beta"]["median"], r["powerflow/grpo_beta"]["ci95"]
        t["time_vs_grpo_beta<=1.00"] = {"met": m <= TIME_TARGET, "confident": hi <= TIME_TARGET}
    if "powerflow/grpo_beta0" in r and "implied_one_forward_ratio" in point:
        bound = point["implied_one_forward_ratio"]["median"]
        m, (lo, hi) = r["powerflow/grpo_beta0"]["median"], r["powerflow/grpo_beta0"]["ci95"]
        t["time_vs_grpo_beta0<=implied"] = {"met": m <= bound, "confident": lo <= bound, "bound": bound}
    for arm in OBJECTIVE_ARMS:
        if f"{arm}/powerflow" in r:
            t[f"{arm}_vs_la_tb<=1.05"] = {"met": r[f"{arm}/powerflow"]["median"] <= TARGET_RATIO}
    if point.get("rss_ratio_powerflow/grpo_beta") is not None:
        t["rss_vs_grpo_beta<=1.05"] = {"met": point["rss_ratio_powerflow/grpo_beta"] <= TARGET_RATIO}
    return t


# ---------------------------------------------------------------------------------------------------------- output
def ci_str(s, digits=3):
    return f"{fmt(s['median'], digits)} [{fmt(s['ci95'][0], digits)}, {fmt(s['ci95'][1], digits)}]"


def cpu_pair(point):
    c = point.get("cpu_time_ratios", {})
    return ", ".join(fmt(c[k]["median"]) if k in c else "n/a" for k in ("powerflow/grpo_beta", "powerflow/grpo_beta0"))


def markdown(result):
    meta = result["meta"]
    m = meta["machine"]
    lines = [
        "## Step cost: PowerFlow vs GRPO",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['ram_gb']} GB RAM, "
        f"{'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'}; Python {m['python']}, torch {m['torch']}, "
        f"trl {m['trl']}, transformers {m['transformers']}; 1 intra-op thread.",
        "",
        f"Settings: {meta['settings']['repeats']} repeat(s) x {meta['settings']['steps']} timed steps "
        f"(+{meta['settings']['warmup']} warm-up) per arm per point, arms interleaved step by step (rotated order); "
        f"ratios are medians of per-round ratios with a bootstrap 95% interval. Center point: model "
        f"{CENTER['model']}, completion length {CENTER['completion_length']}, num_generations "
        f"{CENTER['num_generations']}, {CENTER['prompts_per_step']} prompts per step (batch = prompts x G).",
        "",
        "| point | PowerFlow s/step | GRPO b>0 s/step | GRPO b=0 s/step | PF / GRPO b>0 | PF / GRPO b=0 "
        "| implied by 1 fwd | GRPO b>0 / b=0 | CPU-time PF / Gb, PF / G0 | RSS MB PF / Gb / G0 | RSS PF / Gb "
        "| PF tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        a, r = p["arms"], p["ratios"]

        def get(arm, a=a):
            return a[arm]["step_time_s"]["median"] if arm in a else None

        rss = " / ".join(fmt(a[x]["peak_rss_mb"], 0) if x in a else "n/a" for x in MAIN_ARMS)
        lines.append(
            f"| {p['name']} | {fmt(get('powerflow'))} | {fmt(get('grpo_beta'))} | {fmt(get('grpo_beta0'))} "
            f"| {ci_str(r['powerflow/grpo_beta']) if 'powerflow/grpo_beta' in r else 'n/a'} "
            f"| {ci_str(r['powerflow/grpo_beta0']) if 'powerflow/grpo_beta0' in r else 'n/a'} "
            f"| {fmt(p.get('implied_one_forward_ratio', {}).get('median'))} "
            f"| {ci_str(r['grpo_beta/grpo_beta0']) if 'grpo_beta/grpo_beta0' in r else 'n/a'} "
            f"| {cpu_pair(p)} | {rss} | {fmt(p.get('rss_ratio_powerflow/grpo_beta'))} "
            f"| {fmt(a['powerflow']['completion_tokens_per_s'], 0) if 'powerflow' in a else 'n/a'} |"
        )
    extra = [x for x in result["meta"]["arms"] if x not in MAIN_ARMS]
    if extra:
        lines += ["", "Extra arms (step-time ratio to GRPO beta>0 [95% CI]):", ""]
        for p in result["points"]:
            for x in extra:
                key, peak = f"{x}/grpo_beta", p["arms"][x]["peak_rss_mb"] if x in p["arms"] else None
                if key in p["ratios"]:
                    to_la_tb = p["ratios"].get(f"{x}/powerflow")
                    lines.append(
                        f"- {p['name']}: {x}: {ci_str(p['ratios'][key])}"
                        + (f"; to PowerFlow (LA-TB) {ci_str(to_la_tb)}" if to_la_tb else "")
                        + f"; peak RSS {fmt(peak, 0)} MB"
                    )
    lines += _report.split_table(
        "### Where the step time goes (median ms per step)",
        ["point", "arm"],
        [
            ([p["name"], arm], a["split_s"], a["step_time_s"]["median"])
            for p in result["points"]
            for arm, a in p["arms"].items()
        ],
    )
    lines += ["", "### Targets", ""]
    for key, label in [
        ("time_vs_grpo_beta<=1.00", "step time PowerFlow / GRPO(beta>0) <= 1.00"),
        (
            "time_vs_grpo_beta0<=implied",
            "step time PowerFlow / GRPO(beta=0) <= 1 + (base forward / GRPO(beta=0) step)",
        ),
        ("rss_vs_grpo_beta<=1.05", "peak RSS PowerFlow / GRPO(beta>0) <= 1.05"),
        *((f"{arm}_vs_la_tb<=1.05", f"step time {arm} / PowerFlow (LA-TB) <= 1.05") for arm in OBJECTIVE_ARMS),
    ]:
        if not any(key in p["targets"] for p in result["points"]):
            continue
        met = [p["name"] for p in result["points"] if p["targets"].get(key, {}).get("met")]
        missed = [p["name"] for p in result["points"] if key in p["targets"] and not p["targets"][key]["met"]]
        conf = [p["name"] for p in result["points"] if p["targets"].get(key, {}).get("confident")]
        lines.append(
            f"- {label}: met (median) at {len(met)}/{len(met) + len(missed)} points"
            + (f"; missed at {', '.join(missed)}" if missed else "")
            + (
                f"; whole 95% interval <= 1.00 at {len(conf)}"
                if key == "time_vs_grpo_beta<=1.00"
                else f"; not significantly above the bound (interval reaches it) at {len(conf)}"
                if key == "time_vs_grpo_beta0<=implied"
                else ""
            )
        )
    return "\n".join(lines) + "\n"


def plot(result, out_dir):
    plt = _report.pyplot()
    if plt is None:
        return []
    points = result["points"]
    center = next((p for p in points if p["axis"] == "center"), None)
    axes_spec = [
        ("completion_length", "completion length (tokens)"),
        ("num_generations", "num_generations (batch = 2 prompts x G)"),
        ("model", "model (hidden, layers)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (axis, label) in zip(axes, axes_spec):
        pts = [p for p in points if p["axis"] == axis] + ([center] if center else [])
        if axis == "model":
            order = list(_arms.MODEL_SIZES)
            pts.sort(key=lambda p: order.index(p["config"]["model"]))
            xs = list(range(len(pts)))
            ticks = [f"{p['config']['model']} {_arms.MODEL_SIZES[p['config']['model']]}" for p in pts]
        else:
            pts.sort(key=lambda p: p["config"][axis])
            xs = [p["config"][axis] for p in pts]
        for key, style, name in [
            ("powerflow/grpo_beta", "o-", "PowerFlow / GRPO beta>0"),
            ("powerflow/grpo_beta0", "s-", "PowerFlow / GRPO beta=0"),
            ("grpo_beta/grpo_beta0", "^--", "GRPO beta>0 / GRPO beta=0"),
        ]:
            ys = [p["ratios"][key]["median"] for p in pts]
            err = [
                [y - p["ratios"][key]["ci95"][0] for y, p in zip(ys, pts)],
                [p["ratios"][key]["ci95"][1] - y for y, p in zip(ys, pts)],
            ]
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=name)
        implied = [p.get("implied_one_forward_ratio", {}).get("median") for p in pts]
        ax.plot(xs, implied, ":", color="gray", label="1 + base fwd / GRPO b=0 step")
        ax.axhline(TIME_TARGET, color="red", lw=0.8, ls="--", label=f"{TIME_TARGET:.2f} target")
        if axis == "model":
            ax.set_xticks(xs, ticks)
        elif axis in ("completion_length", "num_generations"):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("step-time ratio (median, 95% CI)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("PowerFlow step cost relative to GRPO, same config")
    fig.tight_layout()
    paths = [os.path.join(out_dir, "step_cost_scaling.png")]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    # Split of PowerFlow's step time along the completion-length axis.
    pts = sorted(
        [p for p in points if p["axis"] in ("completion_length", "center")],
        key=lambda p: p["config"]["completion_length"],
    )
    if pts:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        labels = [str(p["config"]["completion_length"]) for p in pts]
        bottom = [0.0] * len(pts)
        for k in SPLIT_KEYS:
            vals = [p["arms"]["powerflow"]["split_share"][k] for p in pts]
            if max(vals) < 1e-4:
                continue
            ax.bar(labels, vals, bottom=bottom, label=k)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel("completion length (tokens)")
        ax.set_ylabel("share of PowerFlow step time")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("Where PowerFlow's step time goes (model s, G=8)")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "step_cost_split.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv=None):
    parser = _report.parser(__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI smoke run: one tiny point, 1 repeat, 2 steps")
    mode.add_argument("--full", action="store_true", help="more repeats and steps, L up to 512, checkpointing")
    _report.add_out_option(parser)
    parser.add_argument("--points", nargs="*", default=None, help="names of grid points to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the grid points and exit")
    _report.add_arm_options(
        parser, f"arms (default {MAIN_ARMS}); also: {[a for a in _arms.ARMS if a not in MAIN_ARMS]}"
    )
    _report.add_settings_options(parser)
    parser.add_argument("--pin-cpu", type=int, default=None, help="pin every arm to this core once started")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where the tiny models are saved (default: under the temp dir)",
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    mode_name = "quick" if args.quick else "full" if args.full else "default"
    points = grid(mode_name)
    if args.list:
        for name, axis, over in points:
            print(f"{name:12s} {axis:22s} {over}")
        return None
    if args.points:
        points = [p for p in points if p[0] in args.points]
        if not points:
            parser.error("no grid point matches --points; see --list")
    arms = args.arms or list(MAIN_ARMS)
    from benchmarks import _variants

    for a in arms:
        if a not in _arms.ARMS and a not in _variants.VARIANTS:
            parser.error(f"unknown arm {a!r}; choose from {list(_arms.ARMS) + list(_variants.VARIANTS)}")
    settings = settings_for(mode_name, args)
    out_dir = _report.output_dir(args.out, "step_cost", temp=args.quick)
    cache_dir = args.cache_dir or _arms.default_cache_dir()
    work_dir = tempfile.mkdtemp(prefix="step_cost_work_")

    torch = _bench.set_single_thread()
    device = _bench.resolve_device(args.device, torch)
    result = {
        "meta": {
            "command": _report.command_line("step_cost", argv),
            "mode": mode_name,
            "machine": _report.machine_info(),
            "settings": settings,
            "arms": arms,
            "center": CENTER,
            "device": device,
            "model_sizes": {k: {"hidden_size": h, "num_hidden_layers": n} for k, (h, n) in _arms.MODEL_SIZES.items()},
            "arm_labels": _arms.arm_labels(arms),
            "reward": "GRPO arms (and powerflow_shaped): cheap_reward = share of digit characters; "
            "powerflow: label-free, no reward function, no reward computed",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg_1min_at_start": os.getloadavg()[0],
        },
        "points": [],
    }
    t_start = time.perf_counter()
    for name, axis, over in points:
        print(f"[{name}]", file=sys.stderr)
        cfg, model_dir, summary = run_point(
            name, over, arms, settings, cache_dir, work_dir, device, args.seed, args.pin_cpu
        )
        cfg["params"] = _arms.count_params(model_dir)
        summary["loadavg_1min_after"] = os.getloadavg()[0]
        result["points"].append({"name": name, "axis": axis, "config": cfg, **summary})
        r = summary["ratios"]
        msg = ", ".join(f"{k} {ci_str(v)}" for k, v in r.items())
        print(f"  {msg}", file=sys.stderr)
        _report.write_json(out_dir, "step_cost", result)  # partial results survive an interruption
    result["meta"]["wall_time_s"] = time.perf_counter() - t_start
    targets = {}
    for p in result["points"]:
        for k, v in p["targets"].items():
            targets.setdefault(k, {"met_at": [], "missed_at": []})["met_at" if v["met"] else "missed_at"].append(
                p["name"]
            )
    result["targets"] = targets
    _report.write_results(out_dir, "step_cost", result, markdown(result))
    if not args.no_plot and mode_name != "quick":
        plot(result, out_dir)
    print(f"wrote {out_dir}/step_cost.json and step_cost.md in {result['meta']['wall_time_s']:.0f} s", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
