r"""The token-level soft-Bellman balance of `objective='token_balance'`, as pure functions of tensors (shapes as in
`losses.py`; `values` (B, T) is V(s_t) at every completion position)."""

import torch


def suffix_balance_residuals(
    policy_logps: torch.Tensor,
    base_logps: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor,
    alpha: float,
    psi: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Token-level soft-Bellman balance: one residual per completion token t, for the sub-trajectory from the prefix
    s_t to the end of the completion, divided by its number of tokens n_t:

        e_t = [ V(s_t) + sum_{u >= t} (log pi(y_u|s_u) - alpha log p_base(y_u|s_u)) - alpha psi(y) ] / n_t,

    the sum of the per-token residuals V(s_u) + log pi - alpha log p_base - V(s_u+1) from u = t on, with the terminal
    value V(s_|y|) = alpha psi(y). `values` (B, T) holds V(s_t) at every completion position (V(s_0) = log Z(q));
    positions with `mask` 0 are skipped (the sums run over the masked-in tokens). e = 0 for every prefix of every
    completion means log pi*(a|s) = alpha log p_base(a|s) + V(s+a) - V(s): the exact policy of p_base^alpha
    exp(alpha psi) / Z, with no length tilt. Returns (e (B, T), zero off the mask; n_t (B, T)); e_0 is the
    la_tb_exact residual with log Z = V(s_0).
    """
    mask = mask.to(policy_logps.dtype)
    psi = torch.zeros(mask.size(0), dtype=mask.dtype, device=mask.device) if psi is None else psi.to(mask.dtype)
    gap = (policy_logps - alpha * base_logps) * mask
    to_go = gap.flip(-1).cumsum(-1).flip(-1)  # sum_{u >= t}
    tokens_left = mask.flip(-1).cumsum(-1).flip(-1)
    residual = (values.to(gap.dtype) + to_go - alpha * psi.unsqueeze(-1)) / tokens_left.clamp(min=1.0)
    return residual * mask, tokens_left


def suffix_balance_loss_per_sequence(residuals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_t e_t^2 over each completion's tokens (0 for a row without tokens): every completion weighs the same, and
    within it every sub-trajectory to the end."""
    mask = mask.to(residuals.dtype)
    return (residuals.pow(2) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
