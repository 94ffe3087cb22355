"""ZeRO-3 without 16-bit gathering at save time (`zero3_save_16bit_model: false`): transformers saves no state dict
(the weights are in DeepSpeed's checkpoint), but the log-partition head must still be written whole, in a form a
single process can load, in every checkpoint and at the end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from trl_powerflow.training.log_z_head import LOG_Z_HEAD_FILE, LogZHead

REPO = Path(__file__).resolve().parents[1]


def test_zero3_without_16bit_gather_still_saves_the_head(tiny_model_dir, tmp_path):
    environ = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / "cpu_zero3_no16bit.yaml"), "--main_process_port", "29651",
        str(REPO / "scripts" / "train.py"), "--config", str(REPO / "scripts" / "recipes" / "tiny_cpu.yaml"),
        "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path), "--max_steps", "2", "--save_steps", "2",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert not (tmp_path / "model.safetensors").exists()  # really the no-gather path: no consolidated weights
    with open(tmp_path / "checkpoint-2" / "trainer_state.json") as f:
        logged = [e["powerflow/log_z_mean"] for e in json.load(f)["log_history"] if "powerflow/log_z_mean" in e]
    hidden_size = json.loads((Path(tiny_model_dir) / "config.json").read_text())["hidden_size"]
    for path in (tmp_path / LOG_Z_HEAD_FILE, tmp_path / "checkpoint-2" / LOG_Z_HEAD_FILE):
        state = load_file(path)
        head = LogZHead(hidden_size)
        head.load_state_dict(state)  # whole tensors with the head's own shapes, loadable by a single process
        assert bool(head.initialised) and all(torch.isfinite(v.float()).all() for v in state.values())
        assert head.offset.item() != 0.0 and logged
