"""The value checks of `PowerFlowConfig`: run before GRPOConfig's own, each error naming the field."""

import dataclasses
import math

from trl import GRPOConfig

from ..losses import OBJECTIVES
from .divergence import ACTIONS as DIVERGENCE_ACTIONS
from .grpo_options import GRPO_OPTIONS_REJECTED

LOG_Z_ESTIMATORS = ("head", "group")
WEIGHT_LEVELS = ("sequence", "sequence_mean")


def validate_powerflow(config) -> None:
    """Check the PowerFlow fields and the GRPO values PowerFlow reads, before GRPOConfig's own checks; every error
    names the field and what to change."""
    config.alpha = _number("alpha", config.alpha, 0.0, strict=True, hint=" (e.g. 4.0 to sharpen, 0.5 to flatten)")
    _check_choice("objective", config.objective, OBJECTIVES)
    _check_choice("log_z_estimator", config.log_z_estimator, LOG_Z_ESTIMATORS)
    _check_choice("tb_weight_level", config.tb_weight_level, WEIGHT_LEVELS)
    _check_choice("divergence_action", config.divergence_action, DIVERGENCE_ACTIONS)
    if config.log_z_learning_rate is not None:
        _number("log_z_learning_rate", config.log_z_learning_rate, 0.0, hint=" or None")
    if config.log_z_init is not None:
        _number("log_z_init", config.log_z_init, -math.inf, hint=" or None")
    if _number("log_z_dropout", config.log_z_dropout, 0.0, hint=" and < 1") >= 1.0:
        raise ValueError(f"`log_z_dropout` must be a number >= 0 and < 1, got {config.log_z_dropout!r}.")
    for name in ("log_z_recentre", "log_z_detach_features", "kl_at_temperature_one"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"`{name}` must be True or False, got {getattr(config, name)!r}.")
    if config.log_z_estimator == "group":  # token_balance keeps its value head for V(s_t >= 1)
        head_options = config.log_z_learning_rate is not None or config.log_z_detach_features
        if head_options and config.objective != "token_balance":
            raise ValueError(
                "`log_z_learning_rate` and `log_z_detach_features` configure the learned head; they cannot be "
                "used with `log_z_estimator='group'`, which has no head. Unset them or use 'head'."
            )
        if config.num_generations is not None and config.num_generations < 2:
            raise ValueError(
                "`log_z_estimator='group'` needs `num_generations` >= 2: its log Z'(q) is the mean over the "
                "prompt's completions, so with one completion the residual is identically zero and nothing "
                f"trains. Got {config.num_generations}; set num_generations >= 2 or use log_z_estimator='head' "
                "(which trains with one completion per prompt)."
            )
    for name in ("epsilon", "epsilon_high"):
        value = getattr(config, name)
        if value is not None and not (0 <= value < 1 if name == "epsilon" else value >= 0):
            allowed = "in [0, 1)" if name == "epsilon" else ">= 0"
            raise ValueError(f"`{name}` (the clip range of the TB importance weight) must be {allowed}, got {value}.")
    if config.vllm_importance_sampling_correction:
        raise ValueError(
            "`vllm_importance_sampling_correction=True` does not apply to PowerFlow: trajectory balance is "
            "trained on samples from any sampler, so no correction towards vLLM's sampler is needed. Set it to "
            "False."
        )
    _number("learning_rate", config.learning_rate, 0.0)
    _number(
        "temperature",
        config.temperature,
        0.0,
        strict=True,
        hint=" (the sampling temperature; 1.0 samples the policy itself, as the target assumes)",
    )
    _number("beta", config.beta, 0.0, hint=" (the weight of the KL term to the base; 0.0 turns it off)")
    if config.num_generations is not None and config.num_generations < 1:
        raise ValueError(f"`num_generations` must be >= 1 (completions per prompt), got {config.num_generations}.")
    if config.max_completion_length is not None and config.max_completion_length < 1:
        raise ValueError(f"`max_completion_length` must be >= 1, got {config.max_completion_length}.")
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    for name, reason in GRPO_OPTIONS_REJECTED.items():
        if getattr(config, name) != defaults[name]:
            raise ValueError(
                f"`{name}={getattr(config, name)!r}` does not apply to PowerFlow: {reason} Leave it at its default "
                f"({defaults[name]!r})."
            )


def _number(name, value, minimum, strict=False, hint=""):
    """`value` as a float after checking it is a finite real number >= (or > with `strict`) `minimum`."""
    bound = f"{'>' if strict else '>='} {minimum:g}" if minimum > -math.inf else "finite"
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        raise ValueError(f"`{name}` must be a number {bound}{hint}, got {value!r}.")
    return float(value)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")
