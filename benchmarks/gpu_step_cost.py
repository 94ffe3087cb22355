#!/usr/bin/env python
"""Step cost of PowerFlowTrainer vs GRPOTrainer (beta > 0) vs GRPOTrainer (beta = 0) on one GPU, at Qwen2.5-0.5B's
shape, bf16: a thin CLI over `_bench.py` (same arms, same trainer builder, same per-phase split, same statistics as
`step_cost.py`), for `benchmarks/gpu_check.sh`.

Why not `step_cost.py`: its models are the tiny CPU sizes (`_bench.MODEL_SIZES`) with float32 weights and
`bf16=False`, and its grid has no 0.5B point. Here:

- Model: a randomly initialised Qwen2 decoder of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
  intermediate 4864, vocab 151936, tied embeddings; 494M parameters), saved in bf16. Tokenizer: the project's own tiny
  byte-level BPE (`trl_powerflow.toys.tiny_models.build_tiny_tokenizer`, 512 tokens) with the model's vocabulary left
  at Qwen's 151936: the model may sample ids the tokenizer does not know, which decode to nothing (the text is only
  used by GRPO's cheap reward); every id still costs a full 151936-way softmax, as with the real model. Nothing is
  downloaded.
- Precision: `bf16=True` and `model_init_kwargs={"dtype": "bfloat16"}` (bf16 weights, as `trl grpo` loads Qwen2.5-0.5B
  whose config says bfloat16); `--dtype fp32` for float32 weights without autocast.
- Every completion has exactly `--completion-length` tokens (`min_new_tokens` = max_completion_length, as in
  `_bench.common_args`); the recorded min/max completion length shows it.
- Arms run in their own processes (so `torch.cuda.max_memory_allocated` is each arm's own peak, reset at start),
  interleaved one optimiser step at a time with the order rotated every round, as in `_bench.run_group`. Unlike
  `run_group`, each child writes its record after every step and the parent stops at `--deadline-s`: as many whole
  rounds as fit run (at most `--max-steps` timed ones), so the check ends on time on a GPU of unknown speed.
- tokens/s = completion tokens per step / step time (whole optimiser step: generation, extra forwards, loss,
  backward, optimiser); also per second of generation alone.

    python benchmarks/gpu_step_cost.py --out /tmp/gpu                       # on the GPU machine (cuda, bf16, 0.5B)
    python benchmarks/gpu_step_cost.py --device cpu --shape tiny --completion-length 8 --num-generations 2 \
        --warmup 1 --max-steps 1 --out /tmp/dry                             # dry run of the machinery on a CPU
"""

import argparse
import gc
import json
import math
import os
import select
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench  # noqa: E402
from _bench import SPLIT_KEYS, fmt  # noqa: E402

MAIN_ARMS = ["powerflow", "grpo_beta", "grpo_beta0"]
SHAPES = {
    # Qwen2.5-0.5B's decoder shape (config.json of Qwen/Qwen2.5-0.5B), randomly initialised.
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    ),
    # The same vocabulary on a tiny decoder: for a dry run of the machinery on a CPU.
    "tiny": dict(
        vocab_size=151936,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
}


# ---------------------------------------------------------------------------------------------------------- model
def build_model_dir(path, shape, dtype, device, seed=0):
    """Save a random Qwen2 of `shape` (weights in `dtype`) with the project's tiny tokenizer into `path`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from trl_powerflow.toys.tiny_models import build_tiny_tokenizer

    marker = os.path.join(path, "gpu_step_cost_model.json")
    settings = {"shape": SHAPES[shape], "dtype": dtype, "seed": seed}
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                return path
    tokenizer = build_tiny_tokenizer()
    token_ids = {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    config = Qwen2Config(**SHAPES[shape], **token_ids)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):  # initialise on the GPU when there is one: seconds instead of a minute
            model = Qwen2ForCausalLM(config)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.generation_config = GenerationConfig(**token_ids)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(marker, "w") as f:
        json.dump(settings, f)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


def count_params(model_dir):
    from safetensors import safe_open

    total = 0
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), "pt") as f:
                total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


# --------------------------------------------------------------------------------------------------------- worker
def run_worker(spec_path):
    """Child: build one arm (`_bench.build_trainer`), train one step per "go"; write the record after every step."""
    torch = _bench.set_single_thread()
    with open(spec_path) as f:
        spec = json.load(f)
    go_fd, ready_fd = spec["fds"]
    cuda = spec["device"] == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    from transformers import TrainerCallback

    record = {
        "step_time": [],
        "cpu_time": [],
        "split": [],
        "completion_tokens": [],
        "completion_min_length": [],
        "completion_max_length": [],
    }

    def dump():
        record["peak_rss_kb"] = _bench._read_rss_kb("VmHWM")
        if cuda:
            record["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
            record["cuda_reserved_peak_bytes"] = torch.cuda.max_memory_reserved()
        tmp = spec["result_path"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, spec["result_path"])

    class Baton(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            splitter.wrap_optimizer()
            gc.collect()
            gc.freeze()

        def on_step_begin(self, args, state, control, **kwargs):
            os.write(ready_fd, b"r")
            if os.read(go_fd, 1) != b"g":
                os._exit(0)  # the parent stopped the run; the record of the last step is on disk
            gc.disable()
            splitter.reset()
            sync()
            self.c0 = time.process_time()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            elapsed = time.perf_counter() - self.t0
            record["cpu_time"].append(time.process_time() - self.c0)
            gc.enable()
            split = dict(splitter.current)
            split["other"] = max(0.0, elapsed - sum(v for k, v in split.items() if k != "other"))
            record["step_time"].append(elapsed)
            record["split"].append(split)
            metrics = trainer._metrics["train"]
            nan = [float("nan")]
            record["completion_tokens"].append(
                (metrics.get("completions/mean_length") or nan)[-1] * args.per_device_train_batch_size
            )
            record["completion_min_length"].append((metrics.get("completions/min_length") or nan)[-1])
            record["completion_max_length"].append((metrics.get("completions/max_length") or nan)[-1])
            dump()
            gc.collect()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = _bench.build_trainer(spec, [Baton()], os.path.join(spec["work_dir"], "out", spec["name"]))
    splitter = _bench._Splitter(trainer, sync)
    record["cuda_after_init_bytes"] = torch.cuda.memory_allocated() if cuda else None
    trainer.train()
    dump()
    os.write(ready_fd, b"r")  # final: the run is over


# --------------------------------------------------------------------------------------------------------- parent
def run_arms(specs, work_dir, deadline, max_rounds, warmup, grace=30.0, timeout=900):
    """Start one process per spec, then run whole rounds (one step of every arm, rotated order) until `max_rounds`
    or until the next round would end past `deadline` (time.monotonic(); `grace` s past it for the first timed
    round). Returns ({name: record}, rounds, notes)."""
    os.makedirs(work_dir, exist_ok=True)
    env = dict(os.environ)
    env.update(_bench.CHILD_ENV)
    env["PYTHONPATH"] = os.pathsep.join([_bench.BENCH_DIR, _bench.REPO_DIR, env.get("PYTHONPATH", "")])
    procs, notes = [], []
    try:
        for spec in specs:
            go_r, go_w = os.pipe()
            ready_r, ready_w = os.pipe()
            spec = dict(spec, fds=[go_r, ready_w], work_dir=work_dir)
            spec["result_path"] = os.path.join(work_dir, f"{spec['name']}.result.json")
            spec_path = os.path.join(work_dir, f"{spec['name']}.spec.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            log_path = os.path.join(work_dir, f"{spec['name']}.log")
            log = open(log_path, "w")
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", spec_path],
                pass_fds=(go_r, ready_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=_bench.REPO_DIR,
            )
            os.close(go_r)
            os.close(ready_w)
            procs.append({"spec": spec, "proc": proc, "go": go_w, "ready": ready_r, "log": log, "log_path": log_path})

        def wait_ready(p):
            ready, _, _ = select.select([p["ready"]], [], [], timeout)
            if not ready:
                raise _bench.WorkerError(
                    f"{p['spec']['name']}: no answer in {timeout} s\n{_bench._tail(p['log_path'])}"
                )
            if os.read(p["ready"], 1) != b"r":
                p["proc"].wait()
                raise _bench.WorkerError(
                    f"{p['spec']['name']} exited with code {p['proc'].returncode}\n{_bench._tail(p['log_path'])}"
                )

        t0 = time.monotonic()
        for p in procs:  # start-up (imports, model loading) runs concurrently and is not timed
            wait_ready(p)
        notes.append(f"start-up of {len(procs)} arms: {time.monotonic() - t0:.1f} s")
        rounds, round_times = 0, []
        while rounds < max_rounds:
            if round_times:
                # Until one timed round is in, a round may end up to `grace` s past the deadline.
                estimate = max(round_times[-2:])
                limit = deadline + (grace if rounds < warmup + 1 else 0.0)
                if time.monotonic() + estimate > limit:
                    notes.append(
                        f"stopped after {rounds} rounds: the next (~{estimate:.0f} s) would pass the deadline"
                    )
                    break
            t_round = time.monotonic()
            shift = rounds % len(procs)
            for p in procs[shift:] + procs[:shift]:
                os.write(p["go"], b"g")
                wait_ready(p)
            round_times.append(time.monotonic() - t_round)
            rounds += 1
            print(f"    round {rounds}/{max_rounds}: {round_times[-1]:.1f} s", file=sys.stderr, flush=True)
        notes.append(f"round wall times (s): {[round(t, 2) for t in round_times]}")
    finally:
        for p in procs:
            for fd in (p["go"], p["ready"]):
                try:
                    os.close(fd)  # a child waiting for "go" reads EOF and exits
                except OSError:
                    pass
        for p in procs:
            try:
                p["proc"].wait(timeout=60)
            except subprocess.TimeoutExpired:
                p["proc"].kill()
                p["proc"].wait()
            p["log"].close()
    results = {}
    for p in procs:
        try:
            with open(p["spec"]["result_path"]) as f:
                results[p["spec"]["name"]] = json.load(f)
        except (OSError, ValueError):
            results[p["spec"]["name"]] = None
    n = min((len(r["step_time"]) for r in results.values() if r), default=0)
    for r in results.values():  # every arm keeps the same rounds (a child may have written one step more)
        if r:
            for key in (
                "step_time",
                "cpu_time",
                "split",
                "completion_tokens",
                "completion_min_length",
                "completion_max_length",
            ):
                r[key] = r[key][:n]
    return results, n, notes


# -------------------------------------------------------------------------------------------------------- summary
def summarize(records, warmup):
    """`step_cost.summarize_point` (medians, per-round ratios with bootstrap intervals, split, peaks), plus the
    CUDA reserved peak, completion lengths and generation throughput of each arm."""
    import step_cost

    out = step_cost.summarize_point({a: [r] for a, r in records.items()}, warmup)
    for a, r in records.items():
        arm = out["arms"][a]
        arm["cuda_reserved_peak_mb"] = (
            r["cuda_reserved_peak_bytes"] / 2**20 if r.get("cuda_reserved_peak_bytes") else None
        )
        arm["cuda_after_init_mb"] = r["cuda_after_init_bytes"] / 2**20 if r.get("cuda_after_init_bytes") else None
        lengths = [x for x in r["completion_min_length"][warmup:] + r["completion_max_length"][warmup:] if x == x]
        arm["completion_length_min_max"] = [min(lengths), max(lengths)] if lengths else None
        gen = arm["split_s"]["generate"]
        tok = arm["completion_tokens_per_step"]
        arm["generation_tokens_per_s"] = tok / gen if gen else None
    return out


def shape_text(shape):
    return (
        f"hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, {shape['num_attention_heads']} heads / "
        f"{shape['num_key_value_heads']} KV heads, intermediate {shape['intermediate_size']}, vocab "
        f"{shape['vocab_size']}, {'tied' if shape['tie_word_embeddings'] else 'untied'} embeddings"
    )


def markdown(result):
    meta, s = result["meta"], result.get("summary")
    lines = [
        "### Step cost on the GPU: PowerFlow vs GRPO",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Model: random Qwen2 of shape {meta['shape_name']} ({shape_text(meta['shape'])}; "
        f"{meta['params'] / 1e6:.0f}M parameters), weights "
        f"{meta['dtype']}, bf16 autocast {'on' if meta['bf16'] else 'off'}, gradient checkpointing "
        f"{'on' if meta['gradient_checkpointing'] else 'off'}; {meta['prompts_per_step']} prompt(s) x "
        f"{meta['num_generations']} generations of {meta['completion_length']} tokens per step; device "
        f"{meta['device']}. {meta['rounds']} rounds, the first {meta['warmup']} dropped; arms interleaved step by "
        "step (rotated order), each in its own process; ratios are medians of per-round ratios with a bootstrap 95% "
        "interval.",
        "",
    ]
    if not s:
        return "\n".join(lines + [f"No result: {result.get('error', 'no timed round')}", ""])
    arms = s["arms"]
    lines += [
        "| arm | median s/step [95% CI] | tokens/s (step) | tokens/s (generation) | CUDA peak alloc MiB "
        "| CUDA peak reserved MiB | completion length min/max |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, v in arms.items():
        st = v["step_time_s"]
        mm = v.get("completion_length_min_max")
        lines.append(
            f"| {_bench.ARM_LABELS.get(a, a)} | {fmt(st['median'])} [{fmt(st['ci95'][0])}, {fmt(st['ci95'][1])}] "
            f"(n={st['n']}) | {fmt(v['completion_tokens_per_s'], 0)} | {fmt(v.get('generation_tokens_per_s'), 0)} "
            f"| {fmt(v['cuda_peak_mb'], 0)} | {fmt(v.get('cuda_reserved_peak_mb'), 0)} "
            f"| {'/'.join(fmt(x, 0) for x in mm) if mm else 'n/a'} |"
        )
    lines += ["", "| ratio (step time) | median [95% CI] | n |", "|---|---|---|"]
    for k, v in s["ratios"].items():
        lines.append(f"| {k} | {fmt(v['median'])} [{fmt(v['ci95'][0])}, {fmt(v['ci95'][1])}] | {v['n']} |")
    if "implied_one_forward_ratio" in s:
        lines.append(
            f"| 1 + PowerFlow base forward / GRPO(beta=0) step | {fmt(s['implied_one_forward_ratio']['median'])} | |"
        )
    if s.get("cuda_ratio_powerflow/grpo_beta") is not None:
        lines.append(f"| CUDA peak PowerFlow / GRPO(beta>0) | {fmt(s['cuda_ratio_powerflow/grpo_beta'])} | |")
    lines += [
        "",
        "Where the step time goes (median ms per step):",
        "",
        "| arm | " + " | ".join(SPLIT_KEYS) + " | total |",
        "|---|" + "---|" * (len(SPLIT_KEYS) + 1),
    ]
    for a, v in arms.items():
        lines.append(
            f"| {a} | "
            + " | ".join(fmt(1000 * v["split_s"][k], 1) for k in SPLIT_KEYS)
            + f" | {fmt(1000 * v['step_time_s']['median'], 1)} |"
        )
    lines += ["", "Notes: " + "; ".join(meta.get("notes", [])), ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=False, default=None, help="output directory (default: a temp dir)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--completion-length", type=int, default=512)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=1)
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GRPOConfig's default (on); --no-gradient-checkpointing for off",
    )
    parser.add_argument("--arms", nargs="*", default=None, help=f"default {MAIN_ARMS}")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first rounds")
    parser.add_argument("--max-steps", type=int, default=12, help="timed rounds at most")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="start no round that would end later than this many seconds after start (--grace-s more for the first "
        "timed round)",
    )
    parser.add_argument("--grace-s", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default=None, help="where the model is saved (default: under the temp dir)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return None

    t_start = time.monotonic()
    deadline = t_start + args.deadline_s if args.deadline_s else float("inf")
    torch = _bench.set_single_thread()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = args.out or tempfile.mkdtemp(prefix="gpu_step_cost_")
    os.makedirs(out_dir, exist_ok=True)
    arms = args.arms or list(MAIN_ARMS)
    model_dir = args.model_dir or os.path.join(
        _bench.default_cache_dir(), f"gpu-step-cost-{args.shape}-{args.dtype}-s{args.seed}"
    )
    t0 = time.monotonic()
    build_model_dir(model_dir, args.shape, args.dtype, device, args.seed)
    notes = [f"model built/saved in {time.monotonic() - t0:.1f} s"]
    config = {"bf16": args.dtype == "bf16"}
    if args.dtype == "bf16":
        config["model_init_kwargs"] = {"dtype": "bfloat16"}
    specs = [
        {
            "name": arm,
            "arm": arm,
            "model_dir": model_dir,
            "completion_length": args.completion_length,
            "num_generations": args.num_generations,
            "prompts_per_step": args.prompts_per_step,
            "gradient_checkpointing": args.gradient_checkpointing,
            "warmup": args.warmup,
            "steps": args.max_steps,
            "seed": args.seed,
            "device": device,
            "config": config,
        }
        for arm in arms
    ]
    command = "python benchmarks/gpu_step_cost.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = {
        "meta": {
            "command": command.strip(),
            "machine": _bench.machine_info(),
            "device": device,
            "shape_name": args.shape,
            "shape": SHAPES[args.shape],
            "params": count_params(model_dir),
            "dtype": args.dtype,
            "bf16": config["bf16"],
            "gradient_checkpointing": args.gradient_checkpointing,
            "completion_length": args.completion_length,
            "num_generations": args.num_generations,
            "prompts_per_step": args.prompts_per_step,
            "arms": arms,
            "arm_labels": {a: _bench.ARM_LABELS.get(a, a) for a in arms},
            "warmup": args.warmup,
            "max_steps": args.max_steps,
            "deadline_s": args.deadline_s,
            "tokenizer": "project's tiny byte-level BPE (512 tokens); model vocab 151936 (ids past 512 decode to '')",
            "reward": "GRPO arms: _bench.cheap_reward (share of digits); PowerFlow: label-free, no reward",
        },
    }
    json_path = os.path.join(out_dir, "gpu_step_cost.json")
    try:
        records, rounds, run_notes = run_arms(
            specs,
            tempfile.mkdtemp(prefix="gpu_step_cost_work_"),
            deadline,
            args.warmup + args.max_steps,
            args.warmup,
            grace=args.grace_s,
        )
        notes += run_notes
        result["meta"]["rounds"] = rounds
        result["records"] = records
        missing = [a for a, r in records.items() if not r]
        if missing or rounds <= args.warmup:
            result["error"] = f"no timed round (rounds {rounds}, warm-up {args.warmup}; no record from {missing})"
        else:
            result["summary"] = summarize(records, args.warmup)
    except _bench.WorkerError as e:
        result["error"] = str(e)
        result["meta"].setdefault("rounds", 0)
    result["meta"]["notes"] = notes
    result["meta"]["wall_time_s"] = time.monotonic() - t_start
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(os.path.join(out_dir, "gpu_step_cost.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {json_path} in {result['meta']['wall_time_s']:.0f} s", file=sys.stderr)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
