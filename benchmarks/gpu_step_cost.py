"""Step cost of PowerFlowTrainer vs GRPOTrainer (beta > 0) vs GRPOTrainer (beta = 0) on one GPU, at Qwen2.5-0.5B's
shape, bf16: a thin CLI over the harness `_bench` (same worker, arms, trainer builder, per-phase split and statistics
as `step_cost`), for `benchmarks/gpu_check.sh`.

Why not `step_cost`: its models are the tiny CPU sizes (`_arms.MODEL_SIZES`) with float32 weights and `bf16=False`,
and its grid has no 0.5B point. Here:

- Model: a randomly initialised Qwen2 decoder of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV heads,
  intermediate 4864, vocab 151936, tied embeddings; 494M parameters), saved in bf16. Tokenizer: the project's own tiny
  byte-level BPE (`trl_powerflow.toys.tiny_models.build_tiny_tokenizer`, 512 tokens) with the model's vocabulary left
  at Qwen's 151936: the model may sample ids the tokenizer does not know, which decode to nothing (the text is only
  used by GRPO's cheap reward); every id still costs a full 151936-way softmax, as with the real model. Nothing is
  downloaded.
- Precision: `bf16=True` and `model_init_kwargs={"dtype": "bfloat16"}` (bf16 weights, as `trl grpo` loads Qwen2.5-0.5B
  whose config says bfloat16); `--dtype fp32` for float32 weights without autocast.
- Every completion has exactly `--completion-length` tokens (`min_new_tokens` = max_completion_length, as in
  `_arms.common_args`); the recorded min/max completion length shows it.
- Arms run in their own processes (so `torch.cuda.max_memory_allocated` is each arm's own peak, reset at start),
  interleaved one optimiser step at a time with the order rotated every round, by `_bench.run_until`: unlike
  `run_group`, each child writes its record after every step and the parent stops at `--deadline-s`: as many whole
  rounds as fit run (at most `--max-steps` timed ones), so the check ends on time on a GPU of unknown speed.
- tokens/s = completion tokens per step / step time (whole optimiser step: generation, extra forwards, loss,
  backward, optimiser); also per second of generation alone.

    python -m benchmarks.gpu_step_cost --out /tmp/gpu                       # on the GPU machine (cuda, bf16, 0.5B)
    python -m benchmarks.gpu_step_cost --device cpu --shape tiny --completion-length 8 --num-generations 2 \
        --warmup 1 --max-steps 1 --out /tmp/dry                             # dry run of the machinery on a CPU
"""

import argparse
import os
import sys
import tempfile
import time

from benchmarks import _arms, _bench, _report
from benchmarks._report import fmt
from benchmarks.step_cost import MAIN_ARMS, summarize_point

QWEN2_5_0_5B = {  # the decoder shape of Qwen/Qwen2.5-0.5B (its config.json), randomly initialised
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
SHAPES = {
    "qwen2.5-0.5b": QWEN2_5_0_5B,
    # The same vocabulary on a tiny decoder: for a dry run of the machinery on a CPU.
    "tiny": {
        **QWEN2_5_0_5B,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 2048,
    },
}


def build_model_dir(path, shape, dtype, device, seed=0):
    """Save a random Qwen2 of `shape` (weights in `dtype`) with the project's tiny tokenizer into `path` (kept when
    already saved with the same settings)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from trl_powerflow.toys.model_cache import save_cached, seeded_model
    from trl_powerflow.toys.tiny_models import build_tiny_tokenizer, special_token_ids

    def build():
        tokenizer = build_tiny_tokenizer()
        token_ids = special_token_ids(tokenizer)
        config = Qwen2Config(**SHAPES[shape], **token_ids)
        with torch.device(device):  # initialise on the GPU when there is one: seconds instead of a minute
            model = seeded_model(Qwen2ForCausalLM, config, seed)
        torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        model = model.to(torch_dtype)
        model.config.dtype = torch_dtype
        model.generation_config = GenerationConfig(**token_ids)
        return model, tokenizer

    save_cached(path, {"shape": SHAPES[shape], "dtype": dtype, "seed": seed}, build)
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


# -------------------------------------------------------------------------------------------------------- summary
def summarize(records, warmup):
    """`step_cost.summarize_point` (medians, per-round ratios with bootstrap intervals, split, peaks), plus the
    CUDA reserved peak, completion lengths and generation throughput of each arm."""
    out = summarize_point({a: [r] for a, r in records.items()}, warmup)
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
            f"| {_arms.ARM_LABELS.get(a, a)} | {fmt(st['median'])} [{fmt(st['ci95'][0])}, {fmt(st['ci95'][1])}] "
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
    lines += _report.split_table(
        "Where the step time goes (median ms per step):",
        ["arm"],
        [([a], v["split_s"], v["step_time_s"]["median"]) for a, v in arms.items()],
    )
    lines += ["", "Notes: " + "; ".join(meta.get("notes", [])), ""]
    return "\n".join(lines)


def main(argv=None):
    parser = _report.parser(__doc__)
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
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
    _report.add_arm_options(parser, f"default {MAIN_ARMS}")
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
    parser.add_argument("--model-dir", default=None, help="where the model is saved (default: under the temp dir)")
    args = parser.parse_args(argv)

    t_start = time.monotonic()
    deadline = t_start + args.deadline_s if args.deadline_s else float("inf")
    torch = _bench.set_single_thread()
    device = _bench.resolve_device(args.device, torch)
    out_dir = _report.output_dir(args.out, "gpu_step_cost", temp=True)
    arms = args.arms or list(MAIN_ARMS)
    model_dir = args.model_dir or os.path.join(
        _arms.default_cache_dir(), f"gpu-step-cost-{args.shape}-{args.dtype}-s{args.seed}"
    )
    t0 = time.monotonic()
    build_model_dir(model_dir, args.shape, args.dtype, device, args.seed)
    notes = [f"model built/saved in {time.monotonic() - t0:.1f} s"]
    config = {"bf16": args.dtype == "bf16"}
    if args.dtype == "bf16":
        config["model_init_kwargs"] = {"dtype": "bfloat16"}
    batch = {k: getattr(args, k) for k in ("completion_length", "num_generations", "prompts_per_step")}
    specs = _arms.arm_specs(
        arms,
        None,
        model_dir,
        batch,
        args.warmup,
        args.max_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        device=device,
        config=config,
    )
    result = {
        "meta": {
            "command": _report.command_line("gpu_step_cost", argv),
            "machine": _report.machine_info(),
            "device": device,
            "shape_name": args.shape,
            "shape": SHAPES[args.shape],
            "params": _arms.count_params(model_dir),
            "dtype": args.dtype,
            "bf16": config["bf16"],
            "gradient_checkpointing": args.gradient_checkpointing,
            "completion_length": args.completion_length,
            "num_generations": args.num_generations,
            "prompts_per_step": args.prompts_per_step,
            "arms": arms,
            "arm_labels": _arms.arm_labels(arms),
            "warmup": args.warmup,
            "max_steps": args.max_steps,
            "deadline_s": args.deadline_s,
            "tokenizer": "project's tiny byte-level BPE (512 tokens); model vocab 151936 (ids past 512 decode to '')",
            "reward": "GRPO arms: _arms.cheap_reward (share of digits); PowerFlow: label-free, no reward",
        },
    }
    try:
        records, rounds, run_notes = _bench.run_until(
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
    json_path = _report.write_results(out_dir, "gpu_step_cost", result, markdown(result))
    print(f"wrote {json_path} in {result['meta']['wall_time_s']:.0f} s", file=sys.stderr)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
