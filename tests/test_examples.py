"""scripts/examples: the GRPO script and the PowerFlow script side by side, each run for one step on the shipped base:
plain, with LoRA (`--use_peft`), and under `accelerate launch` with the shipped CPU DDP config (no `bf16` flag)."""

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "scripts" / "examples"
ONE_STEP = ["--max_steps", "1", "--per_device_train_batch_size", "4", "--num_generations", "4",
            "--max_completion_length", "12", "--report_to", "none", "--save_strategy", "steps", "--save_steps", "1",
            "--disable_tqdm", "true"]  # fmt: skip


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def run(cmd, timeout=600):
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_the_two_scripts_differ_only_in_the_classes_and_the_reward():
    """The swap a GRPO user makes: imports, the config class, the trainer class and the reward line (and the
    docstring). Fails if the PowerFlow script drifts from the GRPO one in anything else."""
    grpo = (EXAMPLES / "grpo.py").read_text().split('"""', 2)[2].splitlines()
    powerflow = (EXAMPLES / "powerflow.py").read_text().split('"""', 2)[2].splitlines()
    changed = [line[1:].strip() for line in difflib.unified_diff(grpo, powerflow, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]  # fmt: skip
    assert sorted(changed) == sorted(
        [
            "from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config",
            "from trl_powerflow.baselines import REWARD_FUNCS",
            "trainer = GRPOTrainer(",
            'reward_funcs=REWARD_FUNCS["accuracy"],',
            "parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig))",
            "from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config",
            "from trl_powerflow import PowerFlowConfig, PowerFlowTrainer",
            "trainer = PowerFlowTrainer(",
            "parser = TrlParser((ScriptArguments, PowerFlowConfig, ModelConfig))",
        ]
    ), changed


@pytest.mark.parametrize(
    ("script", "extra"),
    [
        ("grpo.py", ["--bf16", "false"]),
        ("powerflow.py", ["--alpha", "4"]),
        ("powerflow.py", ["--use_peft", "--lora_r", "4"]),
    ],
    ids=["grpo", "powerflow", "powerflow-lora"],
)
def test_example_runs_one_step_on_the_shipped_base(tmp_path, script, extra):
    """One optimizer step, the trained model saved (an adapter under --use_peft). PowerFlow runs without `--bf16
    false` on a machine without a GPU: bf16 left at its default is turned off with a notice."""
    run([sys.executable, str(EXAMPLES / script), "--output_dir", str(tmp_path), *ONE_STEP, *extra])
    saved = {p.name for p in tmp_path.iterdir()}
    assert ("adapter_model.safetensors" if "--use_peft" in extra else "model.safetensors") in saved, saved
    assert (tmp_path / "checkpoint-1").is_dir()


@pytest.mark.distributed
def test_powerflow_example_under_accelerate_launch_is_one_two_process_run(tmp_path):
    """`accelerate launch --config_file accelerate_configs/cpu_ddp.yaml scripts/examples/powerflow.py`, no bf16 flag:
    one training of two processes (the checkpoint holds one RNG state per rank: rng_state_0/1.pth). Seen to fail
    before PowerFlowConfig joined the launched processes (each saw a world of one and wrote rng_state.pth; without
    `--bf16 false` it died with "Your setup doesn't support bf16/gpu"); with that join removed, the trainer's own
    check stops both processes ("The launcher started 2 processes but this trainer sees 1")."""
    run([sys.executable, "-m", "accelerate.commands.launch",
         "--config_file", str(REPO / "accelerate_configs" / "cpu_ddp.yaml"), "--main_process_port", "29651",
         str(EXAMPLES / "powerflow.py"), "--output_dir", str(tmp_path), *ONE_STEP])  # fmt: skip
    files = {p.name for p in (tmp_path / "checkpoint-1").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= files and "rng_state.pth" not in files, files
