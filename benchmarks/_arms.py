"""The arms the benchmarks compare, the trainer of each (`build_trainer`, run in the harness's workers) and the tiny
models they train (`model_dir_for`, saved outside the repository)."""

import math
import os

MODEL_SIZES = {
    # name: (hidden_size, num_hidden_layers)
    "xs": (32, 2),
    "s": (64, 2),
    "m": (256, 4),
}


def cheap_reward(completions, **kwargs):
    """The same cheap reward for every arm that needs one: share of digit characters in the completion."""
    out = []
    for completion in completions:
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        out.append(sum(ch.isdigit() for ch in text) / max(len(text), 1))
    return out


ARMS = {
    # name: (trainer, extra config, reward)
    "powerflow": ("powerflow", {}, False),
    "grpo_beta": ("grpo", {"beta": 0.04}, True),
    "grpo_beta0": ("grpo", {"beta": 0.0}, True),
    "powerflow_shaped": ("powerflow", {}, True),
    "powerflow_group": ("powerflow", {"log_z_estimator": "group"}, False),
    "powerflow_la_tb_exact": ("powerflow", {"objective": "la_tb_exact"}, False),
    "powerflow_token_balance": ("powerflow", {"objective": "token_balance"}, False),
    # A/A controls: identical to an arm above, in their own process; their ratio shows the process-to-process noise.
    "grpo_beta_aa": ("grpo", {"beta": 0.04}, True),
    "powerflow_aa": ("powerflow", {}, False),
}

ARM_LABELS = {
    "powerflow": "PowerFlow (label-free, head)",
    "grpo_beta": "GRPO beta=0.04",
    "grpo_beta0": "GRPO beta=0",
    "powerflow_shaped": "PowerFlow + same reward as psi",
    "powerflow_group": "PowerFlow (group log Z)",
    "powerflow_la_tb_exact": "PowerFlow, objective la_tb_exact",
    "powerflow_token_balance": "PowerFlow, objective token_balance (value head)",
    "grpo_beta_aa": "GRPO beta=0.04 (A/A copy)",
    "powerflow_aa": "PowerFlow (A/A copy)",
}


def arm_labels(arms):
    return {a: ARM_LABELS.get(a, a) for a in arms}


def arm_specs(arms, tag, model_dir, cfg, warmup, steps, **extra):
    """One worker spec per arm, named "<arm>.<tag>" ("<arm>" without a tag), for `cfg` (completion_length,
    num_generations, prompts_per_step); `extra` (seed, device, ...) goes into every spec."""
    return [
        {
            "name": f"{arm}.{tag}" if tag else arm,
            "arm": arm,
            "model_dir": model_dir,
            "completion_length": cfg["completion_length"],
            "num_generations": cfg["num_generations"],
            "prompts_per_step": cfg["prompts_per_step"],
            "warmup": warmup,
            "steps": steps,
            **extra,
        }
        for arm in arms
    ]


def common_args(spec, output_dir):
    L = spec["completion_length"]
    G = spec["num_generations"]
    batch = spec["prompts_per_step"] * G
    steps = spec["warmup"] + spec["steps"]
    use_cpu = spec.get("device", "cpu") == "cpu"
    return dict(
        output_dir=output_dir,
        max_completion_length=L,
        num_generations=G,
        per_device_train_batch_size=batch,
        generation_kwargs={"min_new_tokens": L},  # every completion has exactly L tokens: same work in every arm
        max_steps=steps,
        logging_steps=steps + 1000,  # no logging inside the timed run
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        bf16=False,
        use_cpu=use_cpu,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
        disable_dropout=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec.get("seed", 0),
    )


def build_trainer(spec, callbacks, output_dir):
    """Build the trainer of one arm (or of a benchmark variant registered in `_variants`)."""
    from trl import GRPOConfig, GRPOTrainer

    from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    arm = spec["arm"]
    dataset = tiny_prompt_dataset(n=max(64, spec["prompts_per_step"] * (spec["warmup"] + spec["steps"] + 2)))
    args = common_args(spec, output_dir)
    if arm in ARMS:
        kind, extra, with_reward = ARMS[arm]
        trainer_cls = PowerFlowTrainer
    else:
        from benchmarks import _variants

        kind, extra, with_reward, trainer_cls = _variants.VARIANTS[arm]
    args.update(extra)
    args.update(spec.get("config", {}))
    reward = [cheap_reward] if with_reward is True else [with_reward] if callable(with_reward) else None
    config_cls = GRPOConfig if kind == "grpo" else PowerFlowConfig
    return (GRPOTrainer if kind == "grpo" else trainer_cls)(
        model=spec["model_dir"],
        reward_funcs=reward,
        args=config_cls(**args),
        train_dataset=dataset,
        callbacks=callbacks,
    )


def default_cache_dir():
    """Where the tiny benchmark models are saved (outside the repository)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), "trl_powerflow_bench_models")


def model_dir_for(size, cache_dir=None):
    from trl_powerflow.toys.tiny_models import save_tiny_model

    hidden, layers = MODEL_SIZES[size]
    cache_dir = cache_dir or default_cache_dir()
    return save_tiny_model(
        os.path.join(cache_dir, f"tiny-qwen2-h{hidden}-l{layers}"), hidden_size=hidden, num_hidden_layers=layers
    )


def count_params(model_dir):
    """Parameters in the safetensors file(s) of a saved model."""
    from safetensors import safe_open

    total = 0
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), "pt") as f:
                total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total
