"""The drop-in table: what every GRPOConfig option does under PowerFlow (kept, with its meaning) or why it is
rejected. Together the two tables cover every field GRPOConfig adds to TrainingArguments (checked by a test)."""

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
    "disable_dropout": "as in GRPO (the log-partition head's dropout is `log_z_dropout`, 0 by default)",
    "cast_lm_head_to_fp32": "as in GRPO, for the policy and the base model",
    "num_generations": "completions per prompt (the group of the 'group' log Z estimator); 1 is allowed with the "
    "learned head",
    "num_generations_eval": "as in GRPO",
    "max_completion_length": "as in GRPO; completions that hit it count as terminal",
    "ds3_gather_for_generation": "as in GRPO",
    "shuffle_dataset": "as in GRPO",
    "pad_to_multiple_of": "as in GRPO",
    "generation_batch_size": "as in GRPO",
    "steps_per_generation": "as in GRPO; reused generations get the clipped weight w",
    "temperature": "sampling temperature (> 0): the TB loss always uses temperature-1 log-probs (TB is off-policy); "
    "the beta KL term and the logged entropy use it as GRPO does",
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
