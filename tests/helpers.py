"""Shared test helpers: the tiny model's training settings, a small PowerFlowConfig for it, running
scripts/evaluate.py, and reading logged metrics."""

import json
import os
import subprocess
import sys

from trl_powerflow import PowerFlowConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_run_kwargs(output_dir, **kwargs) -> dict:
    """Keyword arguments for any GRPOConfig subclass: a few steps on CPU in float32, 4 completions of at most 8 tokens
    per prompt, 2 steps logged every step, lr 1e-2, seed 0, nothing reported or saved; `kwargs` win."""
    defaults = dict(
        output_dir=str(output_dir),
        max_completion_length=8,
        num_generations=4,
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    defaults.update(kwargs)
    return defaults


def toy_run_kwargs(output_dir, **kwargs) -> dict:
    """`tiny_run_kwargs` for the enumerable toy (trl_powerflow/toys/enumerable.py) against exact oracles: alpha 2,
    completions of at most 3 tokens, lr 3e-3, no gradient checkpointing, no progress bar; `kwargs` win."""
    toy = dict(alpha=2.0, max_completion_length=3, learning_rate=3e-3, gradient_checkpointing=False, disable_tqdm=True)
    return tiny_run_kwargs(output_dir, **{**toy, **kwargs})


def powerflow_args(output_dir, **kwargs) -> PowerFlowConfig:
    """`tiny_run_kwargs` as a PowerFlowConfig.

    POWERFLOW_TEST_DEVICE=cuda runs it on the GPU, in bf16 unless POWERFLOW_TEST_BF16=0 (benchmarks/gpu_check.sh);
    arguments the test passes win over both."""
    device = os.environ.get("POWERFLOW_TEST_DEVICE", "cpu").lower()
    bf16 = os.environ.get("POWERFLOW_TEST_BF16", "1" if device == "cuda" else "0") == "1"
    return PowerFlowConfig(**tiny_run_kwargs(output_dir, **{"bf16": bf16, "use_cpu": device != "cuda", **kwargs}))


def run_evaluate_script(args, tmp_path) -> tuple[dict, str]:
    """Run scripts/evaluate.py with `args` (offline, one thread) writing tmp_path/result.json; assert it exited 0 and
    return (the JSON it wrote, its stdout)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    output = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), *args, "--output_json", str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(output) as f:
        return json.load(f), completed.stdout


def logged(trainer, key) -> list:
    """Every logged value of `key`, in order."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]
