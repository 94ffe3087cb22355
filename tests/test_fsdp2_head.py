"""FSDP2 and the log-partition head, on what runs on this CPU.

accelerate does not run FSDP without a GPU: `AcceleratorState` switches to FSDP only from a GPU-like multi-device
type (MULTI_GPU, MULTI_XPU, ...); with `use_cpu` the state is MULTI_CPU and the FSDP plugin is ignored, so
`accelerate launch --config_file accelerate_configs/fsdp2.yaml` cannot be exercised here (it is the GPU recipe).
torch's FSDP2 itself runs on CPU with gloo, so this test runs the parts PowerFlow adds: the head attached to the
policy and called inside the root module's forward (as the trainer does), sharded with `fully_shard`, trained, saved
whole by `full_head_state` (what `PowerFlowTrainer.save_model` writes when FSDP saves sharded state dicts) in a form a
single process loads, and restored into a sharded head by `load_full_head_state` (what resuming does)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trl_powerflow.training.log_z_head import LogZHead, masked_mean

REPO = Path(__file__).resolve().parent


def test_head_trains_saves_whole_and_reloads_under_fsdp2(tiny_model_dir, tmp_path):
    environ = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29891",
               str(REPO / "fsdp2_head_worker.py"), tiny_model_dir, str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]

    state = load_file(tmp_path / "log_z_head.safetensors")
    before = load_file(tmp_path / "log_z_head_before.safetensors")
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)  # the LM as trained under FSDP2
    head = LogZHead(policy.config.hidden_size)
    head.load_state_dict(state)  # whole tensors: a single process loads them as they are
    assert any(not torch.equal(state[k], before[k]) for k in state)  # it was trained under FSDP2
    for rank in (0, 1):  # the single-process head gives what the sharded one gave on each rank's prompts
        saved = load_file(tmp_path / f"rank{rank}.safetensors")
        with torch.no_grad():
            hidden = policy(input_ids=saved["ids"], output_hidden_states=True).hidden_states[-1]
            log_z = head(masked_mean(hidden, torch.ones_like(saved["ids"])))
        torch.testing.assert_close(log_z, saved["log_z"], rtol=1e-5, atol=1e-6)
