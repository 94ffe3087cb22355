r"""PowerFlow losses as pure functions of tensors.

Shapes: per-token tensors are `(B, T)` and zero where `mask` is 0; per-sequence tensors are `(B,)`.
`|y| = mask.sum(-1)` counts completion tokens (EOS included, padding excluded). A row whose mask is all zero (e.g. a
truncated completion masked by `mask_truncated_completions`) has no residual and is left out of the loss.
"""

import torch

from .training.token_balance import suffix_balance_loss_per_sequence, suffix_balance_residuals

OBJECTIVES = ("la_tb", "tb_traj", "tb_token", "la_tb_exact", "token_balance")
EXACT_OBJECTIVES = ("tb_traj", "la_tb_exact", "token_balance")  # fixed point p_base^alpha exp(alpha psi) / Z


def sequence_stats(per_token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (sum_t log p(y_t) over the mask, |y|) per sequence."""
    mask = mask.to(per_token_logps.dtype)
    return (per_token_logps * mask).sum(-1), mask.sum(-1)


def residual_from_sums(
    s_pi: torch.Tensor,
    s_base: torch.Tensor,
    length: torch.Tensor,
    log_z: torch.Tensor,
    alpha: float,
    psi: torch.Tensor | None = None,
    objective: str = "la_tb",
) -> torch.Tensor:
    r"""Trajectory-balance residual r(y) from per-sequence sums S = sum_t log p(y_t) and lengths |y|.

    - la_tb:    r = log Z'(q) + S_pi/|y| - alpha * (S_base/|y| + psi)      (paper Eq. 10)
    - tb_traj:  r = log Z(q)  + S_pi     - alpha * (S_base + psi)          (paper Eq. 5-6)
    - tb_token: r = log Z(q)  + S_pi     - alpha * (S_base/|y| + psi)      (ablation)
    - la_tb_exact: r = (log Z(q) + S_pi - alpha * (S_base + psi)) / |y|      (LA-TB's per-token scale, TB's exact
      fixed point p_base^alpha exp(alpha psi) / Z: no length tilt)
    - token_balance: as la_tb_exact, with log Z(q) = V(root) (the whole-completion term of `suffix_balance_residuals`)

    Rows with |y| = 0 get r = 0.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {list(OBJECTIVES)}, got {objective!r}.")
    safe_len = length.clamp(min=1.0)
    psi = torch.zeros_like(s_pi) if psi is None else psi.to(s_pi.dtype)
    log_z = log_z.to(s_pi.dtype)
    if objective == "la_tb":
        residual = log_z + s_pi / safe_len - alpha * (s_base / safe_len + psi)
    elif objective == "tb_traj":
        residual = log_z + s_pi - alpha * (s_base + psi)
    elif objective == "tb_token":
        residual = log_z + s_pi - alpha * (s_base / safe_len + psi)
    else:  # la_tb_exact, token_balance
        residual = (log_z + s_pi - alpha * (s_base + psi)) / safe_len
    return torch.where(length > 0, residual, torch.zeros_like(residual))


def tb_residual(
    policy_logps: torch.Tensor,
    base_logps: torch.Tensor,
    mask: torch.Tensor,
    log_z: torch.Tensor,
    alpha: float,
    psi: torch.Tensor | None = None,
    objective: str = "la_tb",
) -> torch.Tensor:
    """Trajectory-balance residual r(y) from per-token log-probs; see `residual_from_sums`."""
    s_pi, length = sequence_stats(policy_logps, mask)
    s_base, _ = sequence_stats(base_logps, mask)
    return residual_from_sums(s_pi, s_base, length, log_z, alpha, psi, objective)


@torch.no_grad()
def sequence_log_ratio(
    policy_logps: torch.Tensor, old_logps: torch.Tensor | None, mask: torch.Tensor, level: str = "sequence"
) -> torch.Tensor:
    """Detached log(pi/pi_old) per sequence: summed over tokens ('sequence') or averaged ('sequence_mean'), clamped to
    [-20, 20] (exp of a long sequence's summed log-ratio can overflow); zeros when on-policy (`old_logps` None)."""
    if old_logps is None:
        return torch.zeros(policy_logps.size(0), dtype=policy_logps.dtype, device=policy_logps.device)
    log_ratio, length = sequence_stats(policy_logps - old_logps, mask)
    if level == "sequence_mean":
        log_ratio = log_ratio / length.clamp(min=1.0)
    elif level != "sequence":
        raise ValueError(f"`level` must be 'sequence' or 'sequence_mean', got {level!r}.")
    return log_ratio.clamp(min=-20.0, max=20.0)


@torch.no_grad()
def tb_importance_weights(
    policy_logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    level: str = "sequence",
) -> torch.Tensor:
    r"""Detached weight w(y) = clip(ratio, 1 - epsilon_low, 1 + epsilon_high), one per sequence.

    ratio = exp(sum_t log(pi/pi_old)) for level 'sequence' (Eq. 10) or exp(mean_t log(pi/pi_old)) for
    'sequence_mean'. Without `old_logps` (on-policy), w = 1.
    """
    return clipped_weight(sequence_log_ratio(policy_logps, old_logps, mask, level), epsilon_low, epsilon_high)


@torch.no_grad()
def clipped_weight(log_ratio: torch.Tensor, epsilon_low: float, epsilon_high: float) -> torch.Tensor:
    """w = clip(exp(log_ratio), 1 - epsilon_low, 1 + epsilon_high), detached: the one place w is computed."""
    return torch.exp(log_ratio).clamp(1.0 - epsilon_low, 1.0 + epsilon_high)


def powerflow_loss(
    policy_logps: torch.Tensor,
    base_logps: torch.Tensor,
    mask: torch.Tensor,
    log_z: torch.Tensor,
    alpha: float,
    psi: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
    objective: str = "la_tb",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    weight_level: str = "sequence",
    num_sequences: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""PowerFlow loss sum_y[w(y) * r(y)^2] / N over the sequences with |y| > 0.

    For `objective='token_balance'`, `log_z` is the value V(s_t) of every completion prefix, shape (B, T), and r(y)^2
    is the per-sequence mean of the squared suffix residuals (`suffix_balance_residuals`); the returned `residual` is
    the whole-completion one, e_0.

    N is `num_sequences` when given (the trainer passes this micro-batch's share of the completions with tokens in the
    whole batch, so that every completion weighs the same whatever the split), else the number of valid rows here.
    Returns the scalar loss (0, still differentiable, when no row has tokens) and detached per-sequence tensors
    `residual`, `weight`, `length`, `valid`, the sums `s_pi` = sum_t log pi(y_t), `s_base` = sum_t log p_base(y_t), and
    `log_ratio`, the unclipped log(pi/pi_old) behind `weight`.
    """
    s_pi, length = sequence_stats(policy_logps, mask)
    s_base, _ = sequence_stats(base_logps, mask)
    if objective == "token_balance":
        residuals, _ = suffix_balance_residuals(policy_logps, base_logps, mask, log_z, alpha, psi)
        squared = suffix_balance_loss_per_sequence(residuals, mask)
        residual = residual_from_sums(s_pi, s_base, length, log_z[:, 0], alpha, psi, objective)
    else:
        residual = residual_from_sums(s_pi, s_base, length, log_z, alpha, psi, objective)
        squared = residual.pow(2)
    log_ratio = sequence_log_ratio(policy_logps, old_logps, mask, weight_level)
    weight = clipped_weight(log_ratio, epsilon_low, epsilon_high)
    valid = (length > 0).to(residual.dtype)
    per_sequence = weight * squared * valid
    if num_sequences is None:
        num_sequences = valid.sum().clamp(min=1.0)
    loss = per_sequence.sum() / num_sequences
    stats = {
        "residual": residual.detach(),
        "weight": weight,
        "length": length,
        "valid": valid.bool(),
        "s_pi": s_pi.detach(),
        "s_base": s_base.detach(),
        "log_ratio": log_ratio,
    }
    return loss, stats


def log_z_slope(length: torch.Tensor, objective: str) -> torch.Tensor:
    """d r / d log Z per sequence: 1/|y| for la_tb_exact and token_balance's root term, 1 otherwise (0 for rows
    without tokens). The constant c minimising sum_y w (r_y + s_y c)^2 is c = -sum_y w s_y r_y / sum_y w s_y^2."""
    per_token = objective in ("la_tb_exact", "token_balance")
    slope = 1.0 / length.clamp(min=1.0) if per_token else torch.ones_like(length)
    return slope * (length > 0).to(slope.dtype)


def group_log_z(
    s_pi: torch.Tensor,
    s_base: torch.Tensor,
    length: torch.Tensor,
    alpha: float,
    num_generations: int,
    psi: torch.Tensor | None = None,
    objective: str = "la_tb",
) -> torch.Tensor:
    r"""Head-free log-partition: the constant that minimises sum_i r_i^2 within each group of completions.

    log Z(q) = mean_i [ alpha * (A_base,i + psi_i) - A_pi,i ] over the completions of q with |y| > 0, where A is the
    per-token mean (la_tb), the sum (tb_traj), or the sum for pi and the mean for the base (tb_token); for la_tb_exact
    the sums, weighted by 1/|y_i|^2 (`log_z_slope` squared). Inputs are
    per-sequence sums and lengths of a batch holding `num_generations` consecutive completions per prompt. Returns
    one value per completion, shape (B,), detached.
    """
    with torch.no_grad():
        zeros = torch.zeros_like(s_pi)
        residual_at_zero = residual_from_sums(s_pi, s_base, length, zeros, alpha, psi, objective)
        slope = log_z_slope(length, objective)
        num = -(slope * residual_at_zero).view(-1, num_generations).sum(-1)
        den = slope.pow(2).view(-1, num_generations).sum(-1)
        log_z = torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))
        return log_z.repeat_interleave(num_generations)


def effective_sample_size(weight: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised effective sample size (sum w)^2 / (n * sum w^2), in (0, 1]; 1 when all weights are equal."""
    if valid is not None:
        weight = weight[valid]
    if weight.numel() == 0:
        return torch.tensor(1.0)
    return weight.sum().pow(2) / (weight.numel() * weight.pow(2).sum()).clamp(min=1e-12)


def k3_kl(policy_logps: torch.Tensor, base_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || p_base): exp(b - p) - (b - p) - 1 (as in GRPO's `beta` term)."""
    delta = base_logps - policy_logps
    return torch.exp(delta) - delta - 1
