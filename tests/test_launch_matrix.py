"""The launch matrix trains, with the learned log Z' head, and stays in sync: two real CPU processes per case, each
training 2 optimizer steps, then the trainable parameters and the head must be bitwise identical on both ranks and
must have moved from their initial values.

Cases (tests/launch_matrix_worker.py builds the trainer in Python; one torchrun launch runs the DDP cases one
after the other, each with its own trainer, model and DDP wrapper; one `accelerate launch` per ZeRO stage):

- DDP x {full fine-tuning, LoRA} x {gradient checkpointing on, off}. These are the two switches that change what
  DDP's reducer sees: transformers builds DDP with `find_unused_parameters=True` unless the model reports activation
  checkpointing, and LoRA freezes the base so only adapters and the head are in the buckets (with checkpointing,
  LoRA also needs input gradients). `find_unused_parameters=True` is the mode that used to crash at the first
  backward ("Expected to mark a variable ready only once") when the head ran outside the wrapped forward.
- ZeRO-2 with LoRA. ZeRO-1 and ZeRO-2 are the same DeepSpeed optimizer (both keep the parameters replicated and
  partition the fp32 optimizer state); ZeRO-2 additionally partitions the gradients (reduce-scatter instead of
  all-reduce), so it is the stricter of the two. DDP's reducer and `find_unused_parameters` do not exist under
  DeepSpeed, so gradient checkpointing is left at TRL's default (on).
- ZeRO-3 with LoRA: parameters, the head included, are partitioned; the worker gathers them to compare.
- objective='token_balance' (the per-prefix value head V(s_t), read at every completion position, no
  re-centring) over the same switches: DDP x {full, LoRA} x {checkpointing on, off}, ZeRO-2 and ZeRO-3 with LoRA.
- token_balance with `log_z_estimator='group'` (V(root) from all-gathered group statistics, detached; the value
  head for the other prefixes, its V(root) regressed on the group's): DDP at the two opposite corners (full with
  checkpointing; LoRA without, `find_unused_parameters=True`) and ZeRO-2/3 with LoRA. What the four DDP switches
  change is the value head's path, shared with the token_balance cases; the group part is the same detached
  all-gather in every one. Seen to fail (the DDP group cases crash) with that all-gather replaced by the local rows.
- BuPO + head under DDP (full fine-tuning, `bupo_layer=1`, `bupo_steps=1`), with and without checkpointing: step 1
  trains the layer-1 policy (the layer above gets no gradient: really unused parameters, so BuPO sets
  `ddp_find_unused_parameters=True` when the user left it unset — transformers' default would be False with TRL's
  default checkpointing, which crashed at step 2) with detached head features, step 2 the full model.

Covered elsewhere, not repeated here: ZeRO-1/2/3 with full fine-tuning through scripts/train.py, DDP vs ZeRO
agreement, 1 vs 2 processes, ZeRO-3 resume and kill-and-resume (tests/test_launch.py). Not covered on this machine:
NCCL/multi-GPU, FSDP, ZeRO offload, vLLM.

Why bitwise: under DDP every rank receives the same all-reduced gradient bits, and clipping, AdamW and the head's
re-centring shift (computed from gathered statistics) are deterministic functions of identical inputs. Under ZeRO-2
each rank steps its partition and all-gathers the result; under ZeRO-3 gathered parameters are copies of their one
owner partition; the head's `offset` buffer is replicated and shifted from gathered statistics. So any difference
between ranks, however small, is a desynchronisation, not rounding: the tolerance is 0.
"""

import json
import math
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "launch_matrix_worker.py"
DDP_CASES = ["full_gc", "full_nogc", "lora_gc", "lora_nogc", "bupo_full_nogc", "bupo_full_gc"]
DDP_CASES += ["tb_full_gc", "tb_full_nogc", "tb_lora_gc", "tb_lora_nogc", "tbg_full_gc", "tbg_lora_nogc"]
LAUNCHES = {"ddp": DDP_CASES, "zero2": ["lora", "tb_lora", "tbg_lora"], "zero3": ["lora", "tb_lora", "tbg_lora"]}
# test id: (launch, worker case)
CASES = {
    "ddp-full-gc": ("ddp", "full_gc"),
    "ddp-full-nogc": ("ddp", "full_nogc"),
    "ddp-lora-gc": ("ddp", "lora_gc"),
    "ddp-lora-nogc": ("ddp", "lora_nogc"),
    "zero2-lora": ("zero2", "lora"),
    "zero3-lora": ("zero3", "lora"),
    "ddp-bupo-head": ("ddp", "bupo_full_nogc"),
    "ddp-bupo-head-gc": ("ddp", "bupo_full_gc"),
    "ddp-token-balance-full-gc": ("ddp", "tb_full_gc"),
    "ddp-token-balance-full-nogc": ("ddp", "tb_full_nogc"),
    "ddp-token-balance-lora-gc": ("ddp", "tb_lora_gc"),
    "ddp-token-balance-lora-nogc": ("ddp", "tb_lora_nogc"),
    "zero2-token-balance-lora": ("zero2", "tb_lora"),
    "zero3-token-balance-lora": ("zero3", "tb_lora"),
    "ddp-token-balance-group-full-gc": ("ddp", "tbg_full_gc"),
    "ddp-token-balance-group-lora-nogc": ("ddp", "tbg_lora_nogc"),
    "zero2-token-balance-group-lora": ("zero2", "tbg_lora"),
    "zero3-token-balance-group-lora": ("zero3", "tbg_lora"),
}
HEAD_KEYS = {"head/out.weight", "head/out.bias", "head/offset", "head/initialised"}  # and the hidden layers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    environ = dict(os.environ)
    environ.update(
        OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false"
    )
    return environ


def launch_command(launch: str) -> list[str]:
    if launch == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]  # fmt: skip
    return [sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO / "accelerate_configs" / f"cpu_{launch}.yaml"),
            "--main_process_port", str(free_port())]  # fmt: skip


@pytest.fixture(scope="module")
def launched(tiny_model_dir, tmp_path_factory):
    """launched(launch) -> (output root, completed process); each launch runs once per module, when first needed."""
    root = tmp_path_factory.mktemp("matrix")

    @cache
    def run(launch):
        out = root / launch
        cases = [arg for case in LAUNCHES[launch] for arg in ("--case", case)]
        cmd = [*launch_command(launch), str(WORKER), "--model", tiny_model_dir, "--out", str(out), *cases]
        # The first DeepSpeed launch on a machine JIT-builds a small comm op (minutes on a loaded 2-core machine).
        return out, subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=1500)

    return run


def case_results(launched, case):
    """rank -> (initial tensors, final tensors, info) of one case; fails with the worker's traceback if it crashed."""
    launch, name = CASES[case]
    out, result = launched(launch)
    directory = out / name
    errors = sorted(directory.glob("rank*.error"))
    assert not errors, f"{case} crashed:\n" + "\n".join(e.read_text()[-4000:] for e in errors)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    results = {}
    for rank in (0, 1):
        with open(directory / f"rank{rank}.json") as f:
            info = json.load(f)
        initial = load_file(directory / f"rank{rank}_initial.safetensors")
        final = load_file(directory / f"rank{rank}.safetensors")
        results[rank] = (initial, final, info)
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_trains_on_two_processes_with_the_head(launched, case):
    results = case_results(launched, case)
    launch, name = CASES[case]
    initial, final, info = results[0]
    assert info["world_size"] == 2
    assert info["distributed_type"] == ("MULTI_CPU" if launch == "ddp" else "DEEPSPEED")
    logs = [entry for entry in info["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2]
    assert all(math.isfinite(entry["loss"]) and math.isfinite(entry["grad_norm"]) for entry in logs)
    assert all(math.isfinite(entry["powerflow/log_z_mean"]) for entry in logs)
    if launch == "ddp" and name.endswith("_nogc"):
        assert info["find_unused_parameters"] is True  # the DDP mode that crashed before the fix
    if name.startswith("tb_"):  # the value head trained, not log Z'(q)
        assert (info["objective"], info["estimator"]) == ("token_balance", "LearnedValue")
    elif name.startswith("tbg_"):  # V(root) from the group, the value head for the other prefixes
        assert (info["objective"], info["estimator"]) == ("token_balance", "GroupRootValue")
    else:
        assert (info["objective"], info["estimator"]) == ("la_tb", "LearnedLogZ")
    if name.startswith("bupo"):
        assert [entry["bupo/active"] for entry in logs] == [1.0, 0.0]  # both phases ran
    head = {k for k in final if k.startswith("head/")}
    assert HEAD_KEYS < head and any(k.startswith("head/body.") for k in head), head
    params = [k for k in final if k.startswith("param/")]
    if "lora" in name:
        assert params and all(".lora_A." in k or ".lora_B." in k for k in params), params
    else:
        assert len(params) >= 20 and not any("lora_" in k for k in params)
    assert final.keys() == initial.keys()
    assert bool(final["head/initialised"]) and not bool(initial["head/initialised"])


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_hold_identical_params_and_head(launched, case):
    """Tolerance 0 (see the module docstring): before and after training, every tensor is bitwise equal on both
    ranks."""
    results = case_results(launched, case)
    for index, when in ((0, "initial"), (1, "final")):
        zero, one = results[0][index], results[1][index]
        assert zero.keys() == one.keys()
        differ = [k for k in zero if not torch.equal(zero[k], one[k])]
        assert not differ, f"{case}: {when} tensors differ between ranks: {differ}"


@pytest.mark.parametrize("case", list(CASES))
def test_params_and_head_moved(launched, case):
    """Every trainable tensor and every head parameter changed, and so did the head's offset (set from the first
    batch, then re-centred after each step). Adam moves any parameter with a nonzero gradient by about the learning
    rate; LoRA's B and the head's output layer start at 0, so after step 1 every tensor has a nonzero gradient."""
    initial, final, _ = case_results(launched, case)[0]
    unmoved = [k for k in final if k != "head/initialised" and torch.equal(final[k], initial[k])]
    assert not unmoved, f"{case}: unchanged after training: {unmoved}"
    for key in final:
        assert torch.isfinite(final[key].float()).all(), key
