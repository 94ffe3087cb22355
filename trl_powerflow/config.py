"""`PowerFlowConfig`: `trl.GRPOConfig` plus the fields of the PowerFlow objective."""

import dataclasses
import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from .losses import OBJECTIVES

LOG_Z_ESTIMATORS = ("head", "group")
WEIGHT_LEVELS = ("sequence", "sequence_mean")

# GRPOConfig options that only shape GRPO's advantage/surrogate loss. PowerFlow replaces that loss, so a non-default
# value would be silently ignored; instead it is rejected with the reason below.
GRPO_OPTIONS_REJECTED = {
    "loss_type": "PowerFlow replaces GRPO's surrogate loss; choose the PowerFlow loss with `objective`.",
    "scale_rewards": "PowerFlow uses no advantages; rewards enter unnormalised as the shaping term psi(y).",
    "multi_objective_aggregation": "rewards enter the LA-TB target as their weighted sum psi(y); nothing is "
    "normalised, so there is nothing to aggregate differently.",
    "importance_sampling_level": "the LA-TB residual is a sequence quantity; set `tb_weight_level` instead.",
    "delta": "two-sided clipping applies to GRPO's ratio*advantage surrogate, which PowerFlow does not use.",
    "sapo_temperature_neg": "SAPO gates GRPO's surrogate, which PowerFlow does not use.",
    "sapo_temperature_pos": "SAPO gates GRPO's surrogate, which PowerFlow does not use.",
    "vespo_k_pos": "VESPO weights GRPO's surrogate, which PowerFlow does not use.",
    "vespo_lambda_pos": "VESPO weights GRPO's surrogate, which PowerFlow does not use.",
    "vespo_k_neg": "VESPO weights GRPO's surrogate, which PowerFlow does not use.",
    "vespo_lambda_neg": "VESPO weights GRPO's surrogate, which PowerFlow does not use.",
    "off_policy_mask_threshold": "the off-policy sequence mask keys on advantage signs; TB is off-policy by design.",
    "top_entropy_quantile": "masking low-entropy tokens would change the TB target (all tokens of y enter p(y)).",
    "entropy_coef": "an entropy bonus changes the fixed point away from p_base^alpha; use `alpha` < 1 to flatten.",
    "use_adaptive_entropy": "an entropy bonus changes the fixed point away from p_base^alpha.",
    "sync_ref_model": "the target p_base^alpha is defined by the frozen starting model; it must not move.",
}


# GRPOConfig options that keep their GRPO meaning under PowerFlow (with what they do there). Together with
# `GRPO_OPTIONS_REJECTED` this covers every field GRPOConfig adds to TrainingArguments (checked by a test).
GRPO_OPTIONS_KEPT = {
    "model_init_kwargs": "as in GRPO; also used to load the frozen base model from the policy's path",
    "trust_remote_code": "as in GRPO",
    "disable_dropout": "as in GRPO; also disables the log-partition head's dropout",
    "cast_lm_head_to_fp32": "as in GRPO, for the policy and the base model",
    "num_generations": "completions per prompt (the group of the 'group' log Z estimator)",
    "num_generations_eval": "as in GRPO",
    "max_completion_length": "as in GRPO; completions that hit it count as terminal",
    "ds3_gather_for_generation": "as in GRPO",
    "shuffle_dataset": "as in GRPO",
    "pad_to_multiple_of": "as in GRPO",
    "generation_batch_size": "as in GRPO",
    "steps_per_generation": "as in GRPO; reused generations get the clipped weight w",
    "temperature": "sampling temperature only: the loss always uses temperature-1 log-probs (TB is off-policy)",
    "top_p": "sampling only; < 1 cuts the sampler's support, so the target holds only on it (warned)",
    "top_k": "sampling only; > 0 cuts the sampler's support, so the target holds only on it (warned)",
    "min_p": "sampling only; > 0 cuts the sampler's support, so the target holds only on it (warned)",
    "generation_kwargs": "as in GRPO (sampling only)",
    "chat_template_kwargs": "as in GRPO",
    "repetition_penalty": "sampling only (TB is off-policy)",
    "cache_implementation": "as in GRPO",
    "use_vllm": "as in GRPO; the log-partition head is never sent to vLLM",
    "vllm_mode": "as in GRPO",
    "vllm_model_impl": "as in GRPO",
    "vllm_enable_sleep_mode": "as in GRPO",
    "vllm_structured_outputs_regex": "as in GRPO",
    "vllm_server_base_url": "as in GRPO",
    "vllm_server_host": "as in GRPO",
    "vllm_server_port": "as in GRPO",
    "vllm_server_timeout": "as in GRPO",
    "vllm_group_port": "as in GRPO",
    "vllm_gpu_memory_utilization": "as in GRPO",
    "vllm_max_model_length": "as in GRPO",
    "vllm_tensor_parallel_size": "as in GRPO",
    "beta": "adds GRPO's KL term (k3 towards the base model, summed over tokens, divided by the step's tokens as "
    "GRPO's default loss_type 'dapo' does) to the TB loss: same value and gradient as in GRPOTrainer",
    "router_aux_loss_coef": "as in GRPO: MoE models add router_aux_loss_coef * aux_loss (the architecture's own "
    "coefficient when None) to the loss and log `aux_loss`",
    "num_iterations": "as in GRPO; reused generations get the clipped weight w",
    "epsilon": "lower clip of the TB importance weight: w >= 1 - epsilon",
    "epsilon_high": "upper clip of the TB importance weight: w <= 1 + epsilon_high (default: epsilon)",
    "reward_weights": "weights of the reward functions in psi(y) = sum_i weight_i * reward_i",
    "mask_truncated_completions": "truncated completions get zero length and are left out of the loss; their mass is "
    "then unconstrained by the target (warned at construction)",
    "ref_model_mixup_alpha": "only used with sync_ref_model, which PowerFlow rejects",
    "ref_model_sync_steps": "only used with sync_ref_model, which PowerFlow rejects",
    "entropy_coef_min": "only used with use_adaptive_entropy, which PowerFlow rejects",
    "entropy_coef_max": "only used with use_adaptive_entropy, which PowerFlow rejects",
    "entropy_coef_delta": "only used with use_adaptive_entropy, which PowerFlow rejects",
    "entropy_target": "only used with use_adaptive_entropy, which PowerFlow rejects",
    "max_tool_calling_iterations": "as in GRPO; tool-output tokens are masked out of |y| and the log-probs",
    "vllm_importance_sampling_correction": "defaults to False; True is rejected (TB needs no sampler correction)",
    "vllm_importance_sampling_mode": "only used with vllm_importance_sampling_correction",
    "vllm_importance_sampling_clip_max": "only used with vllm_importance_sampling_correction",
    "vllm_importance_sampling_clip_min": "only used with vllm_importance_sampling_correction",
    "vllm_importance_sampling_cap": "only used with vllm_importance_sampling_correction",
    "use_bias_correction_kl": "as in GRPO, for the beta KL term",
    "log_completions": "as in GRPO",
    "log_multimodal": "as in GRPO",
    "num_completions_to_print": "as in GRPO",
    "log_unique_prompts": "as in GRPO",
    "log_completions_hub_repo": "as in GRPO",
    "use_transformers_continuous_batching": "as in GRPO",
    "transformers_continuous_batching_config": "as in GRPO",
    "use_transformers_paged": "as in GRPO",
}


@dataclass
class PowerFlowConfig(GRPOConfig):
    r"""
    Configuration for [`PowerFlowTrainer`]: every [`~trl.GRPOConfig`] option plus the PowerFlow objective.

    The policy is trained towards `p_base(y|q)^alpha` with the length-aware trajectory-balance residual

        r(y) = log Z'(q) + (1/|y|) sum_t log pi(y_t) - alpha * [(1/|y|) sum_t log p_base(y_t) + psi(y)]

    and loss `w(y) * r(y)^2`, `w = clip(pi/pi_old, 1 - epsilon, 1 + epsilon_high)` (detached). GRPO's `epsilon` and
    `epsilon_high` are the clip range of `w`; `beta > 0` adds GRPO's k3 KL penalty towards the base model.
    """

    alpha: float = field(
        default=4.0,
        metadata={
            "help": "Power of the target p_base(y|q)^alpha. alpha > 1 sharpens (the paper uses 4 for base models, "
            "2 for instruct models), alpha < 1 flattens (0.5 for creative writing). Must be > 0."
        },
    )
    objective: str = field(
        default="la_tb",
        metadata={
            "help": "Loss: 'la_tb' (length-aware TB, paper Eq. 10, per-token log-partition), 'tb_traj' (plain "
            "trajectory balance on sequence log-probs, Eq. 5-6) or 'tb_token' (target length-averaged, policy "
            "summed; ablation).",
            "choices": list(OBJECTIVES),
        },
    )
    log_z_estimator: str = field(
        default="head",
        metadata={
            "help": "How log Z'(q) is estimated: 'head' (a learned MLP on the mean prompt hidden state of the "
            "policy) or 'group' (no parameters: the residual-minimising constant over the num_generations "
            "completions of each prompt, computed at generation time).",
            "choices": list(LOG_Z_ESTIMATORS),
        },
    )
    log_z_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the log-partition head. None uses `learning_rate`. Only with 'head'."},
    )
    log_z_recentre: bool = field(
        default=True,
        metadata={
            "help": "After every optimizer step, shift the head's log Z' by minus the w-weighted mean TB residual of "
            "that step's completions (all processes) under the updated head: the exact minimiser of the loss over "
            "the constant part of log Z', so that part never lags the policy whatever the two learning rates (the "
            "prompt-dependent part still learns at `log_z_learning_rate`). Only with 'head'."
        },
    )
    log_z_detach_features: bool = field(
        default=False,
        metadata={
            "help": "Detach the prompt features fed to the log-partition head, so its loss trains only the head "
            "and sends no gradient into the language model. Only with 'head'."
        },
    )
    log_z_init: float | None = field(
        default=None,
        metadata={
            "help": "Initial log Z'(q) of the head. None: set it from the first training batch so that the mean TB "
            "residual starts at 0 (otherwise early steps push every log-prob the same way)."
        },
    )
    tb_weight_level: str = field(
        default="sequence",
        metadata={
            "help": "Importance weight w for reused generations (num_iterations > 1 or steps_per_generation > "
            "gradient_accumulation_steps): 'sequence' = clip(prod_t pi/pi_old) as Eq. 10 reads, 'sequence_mean' = "
            "clip(exp(mean_t log pi/pi_old)), the per-token geometric mean (GSPO-style, less extreme for long "
            "completions). Clipped to [1 - epsilon, 1 + epsilon_high]; w = 1 when training is on-policy.",
            "choices": list(WEIGHT_LEVELS),
        },
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "Not used by PowerFlow (TB needs no correction for the sampler), so it defaults to False and "
            "True is rejected."
        },
    )

    def __post_init__(self):
        self._validate_powerflow()
        super().__post_init__()

    def _validate_powerflow(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ValueError(f"`alpha` must be a number > 0, got {self.alpha!r} ({type(self.alpha).__name__}).")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(
                f"`alpha` must be a finite number > 0 (e.g. 4.0 to sharpen, 0.5 to flatten), got {self.alpha}."
            )
        self.alpha = float(self.alpha)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("log_z_estimator", self.log_z_estimator, LOG_Z_ESTIMATORS)
        _check_choice("tb_weight_level", self.tb_weight_level, WEIGHT_LEVELS)
        if self.log_z_learning_rate is not None:
            if isinstance(self.log_z_learning_rate, bool) or not isinstance(self.log_z_learning_rate, (int, float)):
                raise ValueError(
                    f"`log_z_learning_rate` must be a number >= 0 or None, got {self.log_z_learning_rate!r}."
                )
            if not math.isfinite(self.log_z_learning_rate) or self.log_z_learning_rate < 0:
                raise ValueError(f"`log_z_learning_rate` must be >= 0 or None, got {self.log_z_learning_rate}.")
        if self.log_z_init is not None and (
            isinstance(self.log_z_init, bool)
            or not isinstance(self.log_z_init, (int, float))
            or not math.isfinite(self.log_z_init)
        ):
            raise ValueError(f"`log_z_init` must be a finite number or None, got {self.log_z_init!r}.")
        if not isinstance(self.log_z_recentre, bool):
            raise ValueError(f"`log_z_recentre` must be True or False, got {self.log_z_recentre!r}.")
        if not isinstance(self.log_z_detach_features, bool):
            raise ValueError(f"`log_z_detach_features` must be True or False, got {self.log_z_detach_features!r}.")
        if self.log_z_estimator == "group":
            if self.log_z_learning_rate is not None or self.log_z_detach_features:
                raise ValueError(
                    "`log_z_learning_rate` and `log_z_detach_features` configure the learned head; they cannot be "
                    "used with `log_z_estimator='group'`, which has no head. Unset them or use 'head'."
                )
            if self.num_generations is not None and self.num_generations < 2:
                raise ValueError(
                    "`log_z_estimator='group'` needs `num_generations` >= 2 (with one completion per prompt the "
                    f"residual is identically zero), got {self.num_generations}."
                )
        for name in ("epsilon", "epsilon_high"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < 1 if name == "epsilon" else value >= 0):
                allowed = "in [0, 1)" if name == "epsilon" else ">= 0"
                raise ValueError(
                    f"`{name}` (the clip range of the TB importance weight) must be {allowed}, got {value}."
                )
        if self.vllm_importance_sampling_correction:
            raise ValueError(
                "`vllm_importance_sampling_correction=True` does not apply to PowerFlow: trajectory balance is "
                "trained on samples from any sampler, so no correction towards vLLM's sampler is needed. Set it to "
                "False."
            )
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)):
            raise ValueError(f"`learning_rate` must be a number >= 0, got {self.learning_rate!r}.")
        if not math.isfinite(self.learning_rate) or self.learning_rate < 0:
            raise ValueError(f"`learning_rate` must be >= 0, got {self.learning_rate}.")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(f"`max_completion_length` must be >= 1, got {self.max_completion_length}.")
        defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
        for name, reason in GRPO_OPTIONS_REJECTED.items():
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"`{name}={getattr(self, name)!r}` does not apply to PowerFlow: {reason} Leave it at its default "
                    f"({defaults[name]!r})."
                )


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")
