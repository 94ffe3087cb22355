r"""A live estimate of how far the policy is from the LA-TB fixed point (or, `tilt=False`, from the exact target of
the other objectives), from one step's on-policy samples.

Per prompt q the LA-TB fixed point (PAPER_NOTES §3) is

    pi*(y|q) = exp( alpha * (S_base(y) + psi(y) |y|) - lambda_q |y| ),   sum_y pi*(y|q) = 1 fixes lambda_q,

with S = sum_t log p(y_t), |y| the completion length (EOS included) and psi the optional shaping term. lambda_q is the
value the log-partition head log Z'(q) converges to. From G samples y_i ~ pi of each prompt, with the per-sequence log
importance weight a_i = alpha * (S_base,i + psi_i |y_i|) - S_pi,i, this module estimates per prompt:

- lambda_hat, the root of the importance-sampling equation  (1/G) sum_i exp(a_i - lambda |y_i|) = 1;
- KL_hat(pi || pi*) = mean_i [ S_pi,i - alpha * (S_base,i + psi_i |y_i|) + lambda_hat |y_i| ];
- the length distortion of the LA-TB target, KL(pi* || p_base^alpha / Z) = log E*[exp(lambda (|y| - E*|y|))]
  ~= 0.5 * lambda^2 * Var*(|y|), expectations under pi*.

Shapes: per-sequence tensors are `(B,)`, with `B = num_groups * group_size` and the completions of one prompt in
consecutive runs of `group_size` rows (TRL's layout). Everything is computed in float64. The samples must come from
the distribution whose log-probs are given (the sampling temperature folded into the log-probs, no top-k / top-p),
otherwise every estimate below is biased.
"""

import math
from dataclasses import dataclass

import torch

METRIC_NAMES = {
    "lambda_hat": "powerflow/target_lambda",
    "kl": "powerflow/target_kl",
    "length_distortion": "powerflow/length_distortion",
    "length_mean": "powerflow/target_length",
    "ess": "powerflow/target_ess",
}


@dataclass
class TargetDistance:
    r"""Per-group estimates, each a float64 tensor of shape `(num_groups,)`; NaN where a group has no valid row.

    - `lambda_hat`: root of (1/n) sum_i exp(a_i - lambda |y_i|) = 1 (n valid rows), estimates lambda_q = log Z'*(q).
    - `kl`: KL_hat(pi || pi*), >= 0 on-policy.
    - `length_mean`, `length_var`: E*|y| and Var*|y| under pi*, with self-normalised weights
      W_i ~ exp(a_i - lambda_hat |y_i|).
    - `length_distortion`: KL(pi* || pure alpha-power target) = log E*[exp(lambda (|y| - E*|y|))] >= 0, plug-in.
    - `length_distortion_quadratic`: its second-order form 0.5 * lambda_hat^2 * length_var (PAPER_NOTES §3); it can be
      off by a factor of 2 or more when |lambda| * sd(|y|) is not small.
    - `ess`: normalised effective sample size (sum W)^2 / (n sum W^2) of the pi*/pi weights, in (0, 1]; a small value
      means few samples carry the estimate and it is unreliable.
    - `num_valid`: n, the number of rows used.
    """

    lambda_hat: torch.Tensor
    kl: torch.Tensor
    length_mean: torch.Tensor
    length_var: torch.Tensor
    length_distortion: torch.Tensor
    length_distortion_quadratic: torch.Tensor
    ess: torch.Tensor
    num_valid: torch.Tensor


def solve_tilt_root(
    log_w: torch.Tensor, length: torch.Tensor, valid: torch.Tensor, max_iter: int = 100, tol: float = 1e-13
) -> torch.Tensor:
    r"""Per row of `(n_groups, G)` tensors, the root of h(lambda) = logsumexp_i(log_w_i - lambda L_i) - log n = 0.

    Only entries with `valid` count (n of them, L_i > 0 required). h is strictly decreasing and convex, and the root
    lies in the bracket [max_i (log_w_i - log n) / L_i, max_i log_w_i / L_i] (at the lower end the largest term alone
    reaches n, at the upper end every term is <= 1). Safeguarded Newton from the lower end (monotone for a convex
    decreasing h), falling back to bisection when a step leaves the bracket; all groups at once, in float64.
    Degenerate groups: all valid lengths equal -> the closed form (logsumexp_i log_w_i - log n) / L; one valid row ->
    log_w / L; no valid row -> NaN.
    """
    log_w = log_w.to(torch.float64)
    length = length.to(torch.float64)
    valid = valid.bool()
    n = valid.sum(-1)
    empty = n == 0
    neg_inf = torch.tensor(-math.inf, dtype=torch.float64, device=log_w.device)
    log_w = torch.where(valid, log_w, neg_inf)
    length = torch.where(valid, length, torch.ones_like(length))
    log_n = n.clamp(min=1).to(torch.float64).log()

    def h_and_slope(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = log_w - lam.unsqueeze(-1) * length
        lse = torch.logsumexp(z, dim=-1)
        mean_length = (torch.softmax(z, dim=-1) * length).sum(-1)
        return lse - log_n, -mean_length

    ratio = torch.where(valid, log_w / length, neg_inf)
    hi = ratio.max(-1).values
    lo = torch.where(valid, (log_w - log_n.unsqueeze(-1)) / length, neg_inf).max(-1).values
    zero = torch.zeros_like(hi)
    lo, hi = torch.where(empty, zero, lo), torch.where(empty, zero, hi)
    lam = lo.clone()
    for _ in range(max_iter):
        h, slope = h_and_slope(lam)
        lo = torch.where(h >= 0, lam, lo)
        hi = torch.where(h < 0, lam, hi)
        newton = lam - h / slope
        inside = torch.isfinite(newton) & (newton >= lo) & (newton <= hi)
        new = torch.where(inside, newton, 0.5 * (lo + hi))
        done = ((new - lam).abs() <= tol * (1.0 + lam.abs())) | ((hi - lo) <= tol * (1.0 + lo.abs()))
        lam = new
        if bool(done.all()):
            break

    # closed forms where the lengths do not vary (including a single valid row)
    l_max = torch.where(valid, length, torch.zeros_like(length)).max(-1).values
    l_min = torch.where(valid, length, torch.full_like(length, math.inf)).min(-1).values
    equal = (l_max == l_min) & ~empty
    closed = (torch.logsumexp(log_w, dim=-1) - log_n) / torch.where(equal, l_max, torch.ones_like(l_max))
    lam = torch.where(equal, closed, lam)
    return torch.where(empty, torch.full_like(lam, math.nan), lam)


def target_distance(
    s_pi: torch.Tensor,
    s_base: torch.Tensor,
    length: torch.Tensor,
    alpha: float,
    group_size: int,
    psi: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    old_s_pi: torch.Tensor | None = None,
    tilt: bool = True,
) -> TargetDistance:
    r"""Estimate lambda_q, KL(pi || pi*) and the length distortion per prompt from per-sequence sums.

    Inputs (shape `(B,)`): `s_pi` = sum_t log pi(y_t), `s_base` = sum_t log p_base(y_t), `length` = |y|, `psi` the
    per-sequence shaping term inside alpha[.] (0 when None), `valid` (rows with False are left out of their group;
    rows with |y| <= 0 or a non-finite input are always left out), `old_s_pi` = sum_t log pi_old(y_t) when the samples
    were drawn by pi_old (off-policy reuse: `num_iterations` > 1 or `steps_per_generation` > 1).

    With the proposal q = pi_old if `old_s_pi` is given else pi, and a_i = alpha (S_base,i + psi_i |y_i|) - log q(y_i):

        lambda_hat:  (1/n) sum_i exp(a_i - lambda_hat |y_i|) = 1                    (see `solve_tilt_root`)
        KL_hat     = sum_i r_i [S_pi,i - alpha (S_base,i + psi_i |y_i|) + lambda_hat |y_i|] / sum_i r_i
        W_i        = exp(a_i - lambda_hat |y_i|)  (they average to exactly 1 at lambda_hat)
        E*|y|, Var*|y| = self-normalised W-weighted mean and variance of |y|   (under pi*, not pi)
        distortion = log sum_i W_i exp(lambda_hat (|y_i| - E*|y|)) / sum_i W_i   (>= 0)
        quadratic  = 0.5 lambda_hat^2 Var*|y|

    with r_i = pi(y_i)/pi_old(y_i) (r_i = 1 on-policy). The lambda equation needs only the proposal's density, so it
    is corrected exactly (not self-normalised); the KL is an expectation under pi and uses self-normalised r.
    The distortion is KL(pi* || pi_alpha), pi_alpha = p_base^alpha / Z_alpha: pi*/pi_alpha = Z_alpha exp(-lambda |y|)
    and Z_alpha = E*[exp(lambda |y|)], so KL = log E*[exp(lambda |y|)] - lambda E*|y|, a function of the length law
    under pi* alone; its second-order expansion in lambda is the quadratic 0.5 lambda^2 Var*|y| of PAPER_NOTES §3.

    Bias. lambda_hat is the root of a noisy Monte-Carlo sum. At the true root the mean W_bar of the weights
    W_i = pi*(y_i)/q(y_i) is unbiased for 1, but log is concave, so E[log W_bar] <= 0 (Jensen): the estimated log-sum
    lies below the true one and, being decreasing in lambda, crosses zero to the LEFT of lambda_q. lambda_hat <
    lambda_q exactly when W_bar < 1, which happens more often than not for the right-skewed weights of importance
    sampling: lambda_hat is biased DOWN (a too small per-token log-partition). With all lengths equal, lambda_hat =
    lambda_q + log(W_bar)/|y| and the bias is negative for every G. In general, to leading order in 1/G,

        E[lambda_hat] - lambda_q ~= b_G = -[ m Cov*(W, |y|) + chi2 (m^2 - Var*|y|) / 2 ] / (G m^3),

    m = E*|y|, chi2 = E*[W] - 1 = chi^2(pi* || q), Cov* and Var* under pi*. It is negative unless q undersamples
    the short completions pi* favours (Cov*(W, |y|) strongly negative): then rare short samples with huge weights
    pull the mean UP. Either way the bias is O(1/G) and vanishes as G grows (lambda_hat is consistent).
    KL_hat inherits it through the term (lambda_hat - lambda_q) * mean_i |y_i|: on-policy, to leading order,
    E[KL_hat] - KL ~= E_pi|y| b_G + (m - E_pi|y|) / (G m), so mostly an underestimate. Besides, on-policy KL_hat >= 0
    (Jensen on weights that average to 1), it is 0 for G = 1, and exact (lambda_hat = lambda_q, KL_hat = 0) for any
    G when pi = pi*. The length statistics use self-normalised weights: also O(1/G) biased. Off-policy with
    `old_s_pi`, the lambda equation has the same Jensen bias and the self-normalised KL an extra O(1/G) one; without
    `old_s_pi` on samples drawn by pi_old, the estimates take pi for the sampler and are biased by the pi/pi_old
    mismatch, however large G (it grows with the number of optimiser steps since the samples were drawn).

    With `tilt=False` the target is the exact one of tb_traj / la_tb_exact / token_balance,
    pi*(y) = exp(alpha (S_base + psi)) / Z (psi once per sequence, no length tilt): the same estimates with every
    |y| replaced by 1 in the root and the KL, so lambda_hat estimates log Z(q) (sequence-level) and the distortion is
    0; the length statistics stay those of |y| under pi*.
    """
    if s_pi.dim() != 1 or s_pi.numel() % group_size != 0:
        raise ValueError(
            f"expected (B,) tensors with B a multiple of group_size={group_size}, got {tuple(s_pi.shape)}"
        )
    f64 = torch.float64
    s_pi, s_base, length = s_pi.to(f64), s_base.to(f64), length.to(f64)
    psi = torch.zeros_like(s_pi) if psi is None else psi.to(f64)
    log_q = s_pi if old_s_pi is None else old_s_pi.to(f64)
    ok = (length > 0) & torch.isfinite(s_pi) & torch.isfinite(s_base) & torch.isfinite(psi) & torch.isfinite(log_q)
    ok = ok & torch.isfinite(length)
    if valid is not None:
        ok = ok & valid.bool()

    def grouped(x: torch.Tensor) -> torch.Tensor:
        return torch.where(ok, x, torch.zeros_like(x)).view(-1, group_size)

    okg = ok.view(-1, group_size)
    tilt_length = length if tilt else torch.ones_like(length)  # the |y| of the target's exp(-lambda |y|)
    target = grouped(alpha * (s_base + psi * tilt_length))
    len_g = torch.where(okg, grouped(tilt_length), torch.ones_like(target))
    log_w = target - grouped(log_q)
    lam = solve_tilt_root(log_w, len_g, okg)
    empty = ~okg.any(-1)
    lam_safe = torch.where(empty, torch.zeros_like(lam), lam)
    neg_inf = torch.full_like(log_w, -math.inf)

    # W_i / sum W, the self-normalised pi*/q weights at lambda_hat
    log_w_norm = torch.log_softmax(torch.where(okg, log_w - lam_safe.unsqueeze(-1) * len_g, neg_inf), dim=-1)
    log_w_norm = torch.where(okg, log_w_norm, neg_inf)  # all -inf rows of an empty group give NaN; masked anyway
    w = log_w_norm.exp()
    true_len = torch.where(okg, grouped(length), torch.ones_like(target))
    length_mean = (w * true_len).sum(-1)
    centred = torch.where(okg, true_len - length_mean.unsqueeze(-1), torch.zeros_like(true_len))
    length_var = (w * centred.pow(2)).sum(-1)
    distortion = torch.logsumexp(log_w_norm + lam_safe.unsqueeze(-1) * centred, dim=-1).clamp(min=0.0)
    if not tilt:
        distortion = torch.zeros_like(distortion)
    n = okg.sum(-1).to(f64)
    ess = 1.0 / (n * w.pow(2).sum(-1))

    # r_i / sum r, the self-normalised pi/pi_old weights (uniform on-policy)
    log_r = grouped(s_pi - log_q)
    r = torch.softmax(torch.where(okg, log_r, neg_inf), dim=-1)
    r = torch.where(okg, r, torch.zeros_like(r))
    terms = grouped(s_pi) - target + lam_safe.unsqueeze(-1) * len_g
    kl = (r * terms).sum(-1)

    nan = torch.full_like(lam, math.nan)
    out = {
        "kl": kl,
        "length_mean": length_mean,
        "length_var": length_var,
        "length_distortion": distortion,
        "length_distortion_quadratic": 0.5 * lam_safe.pow(2) * length_var * tilt,
        "ess": ess,
    }
    out = {k: torch.where(empty, nan, v) for k, v in out.items()}
    return TargetDistance(lambda_hat=lam, num_valid=n, **out)


def target_distance_metrics(*args, **kwargs) -> dict[str, float]:
    """Batch means over the prompts of `target_distance(*args, **kwargs)`, for logging: `powerflow/target_lambda`,
    `powerflow/target_kl`, `powerflow/length_distortion`, `powerflow/target_length` (E*|y|) and `powerflow/target_ess`
    (names in `METRIC_NAMES`). Groups without a valid row are left out of the means; a value is NaN when no group has
    one. Call it on the per-sequence stats gathered over all processes, so that each group is whole."""
    est = target_distance(*args, **kwargs)
    return {name: float(getattr(est, field).nanmean()) for field, name in METRIC_NAMES.items()}
