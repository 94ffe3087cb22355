"""Warnings at construction and stops during training: options that leave part of the target undetermined, and
non-finite or far-off training statistics."""

import os
import warnings

import torch
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..losses import effective_sample_size

logger = logging.get_logger(__name__)

# Warn (with the numbers) when the mean |TB residual| of a micro-batch exceeds this, or the normalised ESS of the
# unclipped pi/pi_old falls below this (or below 2 effective completions): a policy far from its target, or
# generations reused far off-policy.
LARGE_RESIDUAL = 10.0
LOW_ESS = 0.1

# Sampler options that cut the support of the sampling distribution: TB never sees the completions they exclude.
SUPPORT_CUTTING = {
    "top_k": lambda v: v is not None and v > 0,
    "top_p": lambda v: v is not None and v < 1.0,
    "min_p": lambda v: v is not None and v > 0.0,
    "typical_p": lambda v: v is not None and v < 1.0,
    "epsilon_cutoff": lambda v: v is not None and v > 0.0,
    "eta_cutoff": lambda v: v is not None and v > 0.0,
    "no_repeat_ngram_size": lambda v: v is not None and v > 0,
}


def check_local_model_path(name) -> None:
    """A model given as a string that is a local path (starts with '.', '/' or '~', exists, or has more than one '/',
    which no hub id has) must be a directory: say so before transformers reports it as a malformed repo id."""
    if not isinstance(name, str):
        return
    is_local = name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1
    if is_local and not os.path.isdir(os.path.expanduser(name)):
        raise FileNotFoundError(
            f"Model path {name!r} does not exist or is not a directory: pass the directory of a saved model (the "
            "folder with config.json) or a hub id such as 'Qwen/Qwen2.5-0.5B'."
        )


def warn_undetermined_target(args) -> None:
    """Warn once, at construction, about options that leave part of the LA-TB fixed point undetermined."""
    if args.mask_truncated_completions:
        warnings.warn(
            "`mask_truncated_completions=True`: truncated completions get no residual, so the target constrains only "
            "completions that end before `max_completion_length`; the mass the policy puts on truncated ones is left "
            "free (it is not matched to p_base^alpha). Leave it False to count a truncation as a terminal state.",
            UserWarning,
            stacklevel=3,
        )
    options = {name: getattr(args, name, None) for name in ("top_k", "top_p", "min_p")}
    options.update({k: v for k, v in (args.generation_kwargs or {}).items() if k in SUPPORT_CUTTING})
    cut = [f"{name}={value}" for name, value in options.items() if SUPPORT_CUTTING[name](value)]
    if cut:
        warnings.warn(
            f"{', '.join(cut)} cut(s) the sampler's support: completions outside it are never sampled, so their "
            "probability under the policy is never trained towards p_base^alpha (trajectory balance is off-policy "
            "only for samplers with full support). The fixed point holds on the support the sampler keeps.",
            UserWarning,
            stacklevel=3,
        )


def check_training_health(args, step, mode, losses, residual, log_z, ratio, valid) -> None:
    """Stop before a backward on a non-finite loss, residual or log Z' (every process sees the same gathered values,
    so all stop together); warn, with the numbers, on a large residual or a collapsed ESS."""
    bad = {
        name: int((~torch.isfinite(values)).sum())
        for name, values in (("loss", losses), ("TB residual", residual), ("log Z'", log_z))
    }
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        checkpoint = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        counts = ", ".join(f"{name}: {count} value(s)" for name, count in bad.items())
        raise FloatingPointError(
            f"Non-finite values at {mode} step {step} ({counts}); "
            "training stopped before this update. Likely causes: a learning rate (or log_z_learning_rate) too "
            "large, fp16 overflow (use bf16 or fp32), a reward function returning inf/NaN (psi), or log-probs of "
            "-inf from a sampler that produced tokens the model gives zero probability. Last good checkpoint: "
            f"{checkpoint or 'none saved yet'}."
        )
    if residual.numel() and residual.abs().mean() > LARGE_RESIDUAL:
        logger.warning(
            f"{mode} step {step}: mean |TB residual| = {residual.abs().mean():.3g} (> {LARGE_RESIDUAL}), max "
            f"{residual.abs().max():.3g}: the policy is far from p_base^alpha on these completions (check alpha, "
            "the learning rates and psi)."
        )
    ess, n = effective_sample_size(ratio, valid), int(valid.sum())
    threshold = max(LOW_ESS, 2.0 / max(n, 1))  # below 10% of the completions, or fewer than 2 effective ones
    if n > 1 and ess < threshold:
        logger.warning(
            f"{mode} step {step}: effective sample size of the unclipped pi/pi_old = {ess:.3g} (< {threshold:.3g})"
            f" over {n} completions: the generations are reused far off-policy and w is clipped for "
            "most of them (lower num_iterations / steps_per_generation or the learning rate, or use "
            "tb_weight_level='sequence_mean')."
        )
