"""The multi-node code path for real, on localhost: 2 machines x 1 process, each started by its own `accelerate launch`
with `--num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1` (what scripts/slurm/train_multi_node.slurm runs
on every node). It trains, checkpoints once (head included), and a resumed run ends where an uninterrupted one does."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def launch_two_machines(model_dir, output_dir, port, *extra):
    environ = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(REPO / "accelerate_configs" / "cpu_multi_node.yaml"),
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                str(port),
                str(REPO / "scripts" / "train.py"),
                "--config",
                str(REPO / "scripts" / "recipes" / "tiny_cpu.yaml"),
                "--model_name_or_path",
                model_dir,
                "--output_dir",
                str(output_dir),
                "--disable_tqdm",
                "true",
                *extra,
            ],  # fmt: skip
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-6000:]
    return outputs


def test_two_machines_train_checkpoint_and_resume(tiny_model_dir, tmp_path):
    steps = ["--max_steps", "3", "--save_steps", "2"]
    outputs = launch_two_machines(tiny_model_dir, tmp_path / "full", 29831, *steps)
    assert "processes=2" in outputs[0]
    checkpoint = tmp_path / "full" / "checkpoint-2"
    for name in ("model.safetensors", "log_z_head.safetensors", "optimizer.pt", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]

    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-2")
    launch_two_machines(tiny_model_dir, tmp_path / "resumed", 29841, *steps, "--resume_from_checkpoint", "last")
    for name in ("model.safetensors", "log_z_head.safetensors"):
        full, resumed = load_file(tmp_path / "full" / name), load_file(tmp_path / "resumed" / name)
        for key in full:
            torch.testing.assert_close(resumed[key], full[key], rtol=1e-6, atol=1e-7, msg=f"{name}:{key}")
