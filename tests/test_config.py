"""PowerFlowConfig: fields, defaults and a clear ValueError for every invalid value."""

import dataclasses

import pytest
from trl import GRPOConfig

from trl_powerflow import PowerFlowConfig

NEW_FIELDS = {
    "alpha",
    "objective",
    "log_z_estimator",
    "log_z_learning_rate",
    "log_z_detach_features",
    "log_z_init",
    "tb_weight_level",
    "kl_at_temperature_one",
    "divergence_action",
}


def make(**kwargs):
    return PowerFlowConfig(output_dir="/tmp/powerflow-config-test", bf16=False, report_to=[], **kwargs)


def test_is_a_grpo_config_with_documented_fields():
    config = make()
    assert isinstance(config, GRPOConfig)
    fields = {f.name: f for f in dataclasses.fields(PowerFlowConfig)}
    for name in NEW_FIELDS:
        assert fields[name].metadata.get("help"), name
    assert (config.alpha, config.objective, config.log_z_estimator, config.tb_weight_level) == (
        4.0,
        "la_tb",
        "head",
        "sequence",
    )
    assert config.vllm_importance_sampling_correction is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": "4"}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"objective": "tb_subtraj"}, "objective"),
        ({"log_z_estimator": "mlp"}, "log_z_estimator"),
        ({"log_z_learning_rate": -1e-3}, "log_z_learning_rate"),
        ({"learning_rate": -1e-6}, "learning_rate"),
        ({"learning_rate": "1e-6"}, "learning_rate"),
        ({"log_z_learning_rate": "fast"}, "log_z_learning_rate"),
        ({"log_z_detach_features": "yes"}, "log_z_detach_features"),
        ({"log_z_init": "zero"}, "log_z_init"),
        ({"tb_weight_level": "token"}, "tb_weight_level"),
        ({"log_z_estimator": "group", "log_z_learning_rate": 1e-3}, "log_z_learning_rate"),
        ({"log_z_estimator": "group", "log_z_detach_features": True}, "log_z_detach_features"),
        ({"log_z_estimator": "group", "num_generations": 1, "per_device_train_batch_size": 1}, "num_generations"),
        ({"epsilon": 1.0}, "epsilon"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon_high": -0.1}, "epsilon_high"),
        ({"vllm_importance_sampling_correction": True}, "vllm_importance_sampling_correction"),
        ({"max_completion_length": 0}, "max_completion_length"),
        ({"loss_type": "grpo"}, "loss_type"),
        ({"scale_rewards": "batch"}, "scale_rewards"),
        ({"importance_sampling_level": "sequence"}, "importance_sampling_level"),
        ({"entropy_coef": 0.01}, "entropy_coef"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile"),
        ({"sync_ref_model": True}, "sync_ref_model"),
        ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.7}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"beta": -0.1}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"kl_at_temperature_one": "yes"}, "kl_at_temperature_one"),
        ({"divergence_action": "restart"}, "divergence_action"),
        ({"num_generations": 0, "per_device_train_batch_size": 1}, "num_generations"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    """Each invalid value fails at construction (before any model is loaded) with an error naming the field.
    temperature 0 / beta < 0 were accepted before (the first failed at the first generation, the second trained)."""
    with pytest.raises(ValueError, match=f"`{field}"):
        make(**kwargs)


def test_one_generation_per_prompt_is_a_powerflow_batch():
    """GRPO refuses num_generations=1 (no group to compute advantages); PowerFlow has no advantages and its learned
    head gives every completion its own residual, so the config accepts it (the trainer test trains with it)."""
    assert make(num_generations=1, per_device_train_batch_size=3).num_generations == 1
    with pytest.raises(ValueError, match="at least 2 generations"):
        GRPOConfig(output_dir="/tmp/grpo-config-test", bf16=False, num_generations=1, per_device_train_batch_size=3)


def test_valid_variants():
    assert make(alpha=0.5, objective="tb_traj").alpha == 0.5
    assert make(alpha=2, log_z_estimator="group").alpha == 2.0  # ints are accepted and stored as float
    assert make(tb_weight_level="sequence_mean", epsilon=0.1, epsilon_high=0.3).epsilon_high == 0.3
    assert make(log_z_learning_rate=0.0).log_z_learning_rate == 0.0
