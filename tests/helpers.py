"""Shared test helpers: a small PowerFlowConfig for the tiny model, and reading logged metrics."""

import os

from trl_powerflow import PowerFlowConfig


def powerflow_args(output_dir, **kwargs) -> PowerFlowConfig:
    """A few steps on the tiny model on CPU: 4 completions of at most 8 tokens per prompt, logged every step.

    POWERFLOW_TEST_DEVICE=cuda runs it on the GPU, in bf16 unless POWERFLOW_TEST_BF16=0 (benchmarks/gpu_check.sh);
    arguments the test passes win over both."""
    device = os.environ.get("POWERFLOW_TEST_DEVICE", "cpu").lower()
    bf16 = os.environ.get("POWERFLOW_TEST_BF16", "1" if device == "cuda" else "0") == "1"
    defaults = dict(
        output_dir=str(output_dir),
        max_completion_length=8,
        num_generations=4,
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-2,
        bf16=bf16,
        use_cpu=device != "cuda",
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    defaults.update(kwargs)
    return PowerFlowConfig(**defaults)


def logged(trainer, key) -> list:
    """Every logged value of `key`, in order."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]
