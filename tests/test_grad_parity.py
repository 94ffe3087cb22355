"""One process and two processes on the same global batch give the same gradients and the same log Z' shift.

The launch matrix checks that both ranks are identical and moved: a computation wrong in the same way on both ranks
passes it, and DDP's `broadcast_buffers` copies rank 0's head offset to rank 1, which hides a missing all-reduce of
the re-centring or the first-batch initialisation. Here the 2-process run is compared with the 1-process run, on
gradients as the optimizer receives them (not Adam-normalised parameters, which turn rounding into lr-sized moves).

Tolerance: the runs do the same float32 arithmetic except the order of the cross-process sums (DDP's gradient mean,
the gathers behind N and the residual means), so gradients agree to 1e-5 relative to the largest entry of each
tensor, and the offsets and loss to 1e-5.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "grad_parity_worker.py"

pytestmark = pytest.mark.distributed


def _prompts(path):
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}? Answer in \\boxed{{}}."}]}
            for a, b in zip(range(10, 14), range(50, 54))]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _run(launch, model_dir, prompts, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(WORKER), model_dir, prompts, str(out)]
    if launch:
        config = str(REPO / "accelerate_configs" / "cpu_ddp.yaml")
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
        cmd = [*launcher, "--main_process_port", "29661", *cmd[1:]]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    return load_file(out / "grads.safetensors")


def test_two_processes_give_the_one_process_gradients_and_shift(tiny_model_dir, tmp_path):
    """Seen to fail with the all-reduce dropped from the head's re-centring (`recentre`: offset after the step
    differs) and with the per-process count used for N instead of the gathered one (every gradient doubles)."""
    prompts = _prompts(tmp_path / "prompts.jsonl")
    one = _run(False, tiny_model_dir, prompts, tmp_path / "one")
    two = _run(True, tiny_model_dir, prompts, tmp_path / "two")
    assert one.keys() == two.keys()
    grads = [k for k in one if k.startswith("grad/")]
    assert any("log_z_head" in k for k in grads) and any("log_z_head" not in k for k in grads)
    nonzero = [k for k in grads if one[k].abs().max() > 0]  # the head's hidden layers get 0 while out.weight is 0
    assert "grad/log_z_head.out.bias" in nonzero and any("log_z_head" not in k for k in nonzero)
    for key in grads:
        scale = one[key].abs().max().item()
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5 * scale + 1e-12, msg=key)
    for key in ("offset/before_step", "offset/after_step", "loss"):
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(one["offset/before_step"], one["offset/after_step"])  # the step re-centred
