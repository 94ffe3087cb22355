"""Before/after figures for the pieces of per-step work PowerFlow must not pay for.

Each item compares two arms, interleaved step by step in separate processes like `step_cost`:

  old_pass        no old-policy log-prob pass when training is fully on-policy (w = 1):
                  before = `pf_force_old_pass` (always runs it), after = `powerflow` (the trainer as it is)
  reward          no reward computation when no reward function is given:
                  before = `pf_zero_reward` (GRPO's placeholder zero reward kept), after = `powerflow`
  head_features   the log-partition head reuses the hidden states of the loss forward:
                  before = `pf_separate_head_forward` (a second backbone forward over the prompt), after = `powerflow`
  group_old_pass  (suggested, NOT in the trainer) group log Z estimate from the loss forward's detached log-probs:
                  before = `powerflow_group` (the trainer as it is: a no-grad policy pass per generation batch),
                  after = `pf_group_fused` (benchmarks/_variants.py)

plus a count of host reads (`.item()`, `.tolist()`, `.cpu()`, `bool(tensor)`, ...) per optimizer step by call site for
PowerFlow and GRPO: each is a host/device synchronisation on an accelerator when the tensor is on the device.

    python -m benchmarks.waste            # default (about 8 min on 2 CPU cores)
    python -m benchmarks.waste --quick    # CI smoke run
"""

import os
import sys
import tempfile
import time

from benchmarks import _arms, _bench, _report
from benchmarks._bench import SPLIT_KEYS
from benchmarks._report import fmt, median, pooled, ratio_summary

ITEMS = [
    ("old_pass", "no old-policy log-prob pass when on-policy (w = 1)", "pf_force_old_pass", "powerflow", "in trainer"),
    ("reward", "no reward computation without reward functions", "pf_zero_reward", "powerflow", "in trainer"),
    (
        "head_features",
        "head reuses the loss forward's hidden states",
        "pf_separate_head_forward",
        "powerflow",
        "in trainer",
    ),
    (
        "group_old_pass",
        "group log Z from the loss forward (on-policy)",
        "powerflow_group",
        "pf_group_fused",
        "suggested",
    ),
]
TIMING_ARMS = [
    "powerflow",
    "pf_force_old_pass",
    "pf_zero_reward",
    "pf_separate_head_forward",
    "powerflow_group",
    "pf_group_fused",
    "grpo_beta",
]
QUICK_ARMS = ["powerflow", "pf_force_old_pass", "pf_separate_head_forward", "pf_group_fused"]
SYNC_ARMS = ["powerflow", "grpo_beta", "grpo_beta0", "powerflow_group", "pf_group_fused"]
CONFIGS = {
    "center": {"model": "s", "completion_length": 64, "num_generations": 8, "prompts_per_step": 2},
    "model=m": {"model": "m", "completion_length": 64, "num_generations": 8, "prompts_per_step": 2},
    "quick": {"model": "xs", "completion_length": 8, "num_generations": 2, "prompts_per_step": 2},
}


def specs_for(arms, cfg, model_dir, settings, tag, count_syncs=False, device="cpu", seed=0):
    extra = {"seed": seed, "device": device, "count_syncs": count_syncs}
    return _arms.arm_specs(arms, tag, model_dir, cfg, settings["warmup"], settings["steps"], **extra)


def summarize(records, warmup):
    times, cpu = pooled(records, "step_time", warmup), pooled(records, "cpu_time", warmup)
    splits = pooled(records, "split", warmup)
    arms = {
        a: {
            "step_time_s": median(times[a]),
            "cpu_time_s": median(cpu[a]),
            "split_s": {k: median([s[k] for s in splits[a]]) for k in SPLIT_KEYS},
            "peak_rss_mb": median([rec["peak_rss_kb"] / 1024 for rec in records[a]]),
        }
        for a in records
    }
    items = {}
    for key, label, before, after, status in ITEMS:
        if before not in times or after not in times:
            continue
        diffs = [b - a for b, a in zip(times[before], times[after])]
        items[key] = {
            "label": label,
            "status": status,
            "before": before,
            "after": after,
            "before_s": arms[before]["step_time_s"],
            "after_s": arms[after]["step_time_s"],
            "ratio_before/after": ratio_summary(times[before], times[after]),
            "cpu_ratio_before/after": ratio_summary(cpu[before], cpu[after]),
            "saved_s_per_step": {"median": median(diffs), "ci95": list(_report.bootstrap_median_ci(diffs))},
            "rss_before_mb": arms[before]["peak_rss_mb"],
            "rss_after_mb": arms[after]["peak_rss_mb"],
        }
    ref = {}
    if "grpo_beta" in times:
        for a in times:
            if a != "grpo_beta":
                ref[f"{a}/grpo_beta"] = ratio_summary(times[a], times["grpo_beta"])
    return {"arms": arms, "items": items, "ratios_to_grpo_beta": ref}


def group_syncs(counts):
    """{call: per step} -> per package and the PowerFlow call sites."""
    by_package, powerflow_sites = {}, {}
    for key, n in counts.items():
        method, site = key.split(" @ ", 1)
        package = site.split("/", 1)[0].split(":", 1)[0]
        by_package[package] = by_package.get(package, 0) + n
        if package == "trl_powerflow" or "trl/trainer/grpo_trainer.py" in site or package == "benchmarks":
            powerflow_sites[key] = n
    return by_package, powerflow_sites


def markdown(result):
    lines = ["## Waste removed (before/after)", "", f"Command: `{result['meta']['command']}`", ""]
    lines += [
        "| config | item | status | before (s/step) | after (s/step) | before / after [95% CI] | saved ms/step "
        "| CPU-time before / after | RSS MB before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cname, c in result["configs"].items():
        for it in c["items"].values():
            r, s = it["ratio_before/after"], it["saved_s_per_step"]
            lines.append(
                f"| {cname} | {it['label']} (`{it['before']}` -> `{it['after']}`) | {it['status']} "
                f"| {fmt(it['before_s'])} | {fmt(it['after_s'])} "
                f"| {fmt(r['median'])} [{fmt(r['ci95'][0])}, {fmt(r['ci95'][1])}] "
                f"| {fmt(1000 * s['median'], 1)} [{fmt(1000 * s['ci95'][0], 1)}, {fmt(1000 * s['ci95'][1], 1)}] "
                f"| {fmt(it['cpu_ratio_before/after']['median'])} "
                f"| {fmt(it['rss_before_mb'], 0)} / {fmt(it['rss_after_mb'], 0)} |"
            )
    lines += _report.split_table(
        "Median ms per step by phase:",
        ["config", "arm"],
        [
            ([cname, arm], a["split_s"], a["step_time_s"])
            for cname, c in result["configs"].items()
            for arm, a in c["arms"].items()
        ],
    )
    if result.get("syncs"):
        lines += [
            "",
            "### Host reads per optimizer step (`.item()`, `.tolist()`, `.cpu()`, `bool()`, ...)",
            "",
            "| arm | " + " | ".join(result["sync_packages"]) + " |",
            "|---|" + "---|" * len(result["sync_packages"]),
        ]
        for arm, s in result["syncs"].items():
            lines.append(
                f"| {arm} | " + " | ".join(fmt(s["by_package"].get(p, 0.0), 1) for p in result["sync_packages"]) + " |"
            )
        lines += ["", "PowerFlow and GRPO trainer call sites (per step):", ""]
        for arm, s in result["syncs"].items():
            sites = ", ".join(f"`{k}` x{fmt(v, 1)}" for k, v in s["sites"].items())
            lines.append(f"- {arm}: {sites}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = _report.parser(__doc__, quick_help="CI smoke run (one tiny config, 2 steps)")
    parser.add_argument("--configs", nargs="*", default=None, help=f"of {list(CONFIGS)}")
    _report.add_settings_options(parser)
    parser.add_argument("--no-syncs", action="store_true", help="skip the host-read count")
    args = parser.parse_args(argv)
    settings = {"repeats": 1, "warmup": 1, "steps": 2} if args.quick else {"repeats": 2, "warmup": 3, "steps": 12}
    settings = _report.overridden(settings, args)
    configs = args.configs or (["quick"] if args.quick else ["center", "model=m"])
    out_dir = _report.output_dir(args.out, "waste", temp=args.quick)
    cache_dir = _arms.default_cache_dir()
    work_dir = tempfile.mkdtemp(prefix="waste_work_")
    device = _bench.resolve_device("auto", _bench.set_single_thread())
    result = {
        "meta": {
            "command": _report.command_line("waste", argv),
            "machine": _report.machine_info(),
            "settings": settings,
            "items": [{"key": k, "label": lab, "before": b, "after": a, "status": s} for k, lab, b, a, s in ITEMS],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "configs": {},
    }
    t_start = time.perf_counter()
    for cname in configs:
        cfg = CONFIGS[cname]
        model_dir = _arms.model_dir_for(cfg["model"], cache_dir)
        # The quick run starts only the arms that exercise the benchmark's own trainer variants (4 processes).
        arms = QUICK_ARMS if args.quick else TIMING_ARMS
        records = {a: [] for a in arms}
        for r in range(settings["repeats"]):
            specs = specs_for(arms, cfg, model_dir, settings, f"r{r}", count_syncs=args.quick, device=device)
            t0 = time.perf_counter()
            out = _bench.run_group(specs, os.path.join(work_dir, cname.replace("=", "_"), f"r{r}"), rotation_offset=r)
            print(f"  {cname} repeat {r + 1}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for a in arms:
                records[a].append(out[f"{a}.r{r}"])
            if args.quick and r == 0:
                sync_out = out  # the quick run counts host reads in its only group
        result["configs"][cname] = {"config": cfg, **summarize(records, settings["warmup"])}
        _report.write_json(out_dir, "waste", result)

    if not args.no_syncs:
        if not args.quick:
            cfg = CONFIGS["center"]
            sync_settings = {"repeats": 1, "warmup": 2, "steps": 4}
            specs = specs_for(
                SYNC_ARMS,
                cfg,
                _arms.model_dir_for(cfg["model"], cache_dir),
                sync_settings,
                "sync",
                count_syncs=True,
                device=device,
            )
            sync_out = _bench.run_group(specs, os.path.join(work_dir, "sync"))
        result["syncs"] = {}
        packages = set()
        for name, rec in sync_out.items():
            arm = name.rsplit(".", 1)[0]
            if arm not in SYNC_ARMS:
                continue
            by_package, sites = group_syncs(rec.get("sync_counts_per_step", {}))
            packages |= set(by_package)
            result["syncs"][arm] = {
                "by_package": by_package,
                "sites": sites,
                "all": rec.get("sync_counts_per_step", {}),
            }
        result["sync_packages"] = sorted(packages)
    result["meta"]["wall_time_s"] = time.perf_counter() - t_start
    _report.write_results(out_dir, "waste", result, markdown(result))
    print(f"wrote {out_dir}/waste.json and waste.md in {result['meta']['wall_time_s']:.0f} s", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
