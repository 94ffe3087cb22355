"""Loss functions against values computed by hand (numbers in the comments)."""

import math

import pytest
import torch

from trl_powerflow.losses import (
    effective_sample_size,
    group_log_z,
    k3_kl,
    powerflow_loss,
    tb_importance_weights,
    tb_residual,
)

# Row 0: 2 tokens then padding. Row 1: 3 tokens, no EOS (truncated at the limit: terminal, counted normally).
# Row 2: masked to zero length (e.g. mask_truncated_completions); its padded values must not matter.
POLICY = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, -0.5, -0.5], [-1.0, -1.0, -1.0]])
BASE = torch.tensor([[-2.0, -1.0, 7.0], [-1.0, -1.0, -1.0], [-3.0, -3.0, -3.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
LOG_Z = torch.tensor([0.3, -0.2, 0.1])
PSI = torch.tensor([0.0, -0.5, 0.0])
ALPHA = 2.0

# S_pi = (-3, -1.5), S_base = (-3, -3), |y| = (2, 3)
EXPECTED_RESIDUALS = {
    # 0.3 - 3/2 - 2 * (-3/2) = 1.8 ; -0.2 - 1.5/3 - 2 * (-3/3 - 0.5) = 2.3
    "la_tb": [1.8, 2.3, 0.0],
    # 0.3 - 3 - 2 * (-3) = 3.3 ; -0.2 - 1.5 - 2 * (-3 - 0.5) = 5.3
    "tb_traj": [3.3, 5.3, 0.0],
    # 0.3 - 3 - 2 * (-3/2) = 0.3 ; -0.2 - 1.5 - 2 * (-1 - 0.5) = 1.3
    "tb_token": [0.3, 1.3, 0.0],
    # the tb_traj residuals divided by |y|: 3.3 / 2 ; 5.3 / 3
    "la_tb_exact": [1.65, 5.3 / 3, 0.0],
}
EXPECTED_LOSS = {  # mean of r^2 over the two rows with tokens
    "la_tb": (1.8**2 + 2.3**2) / 2,
    "tb_traj": (3.3**2 + 5.3**2) / 2,
    "tb_token": (0.3**2 + 1.3**2) / 2,
    "la_tb_exact": (1.65**2 + (5.3 / 3) ** 2) / 2,
}


@pytest.mark.parametrize("objective", ["la_tb", "tb_traj", "tb_token", "la_tb_exact"])
def test_residual_and_loss_match_hand_computation(objective):
    residual = tb_residual(POLICY, BASE, MASK, LOG_Z, ALPHA, PSI, objective)
    torch.testing.assert_close(residual, torch.tensor(EXPECTED_RESIDUALS[objective]))
    loss, stats = powerflow_loss(POLICY, BASE, MASK, LOG_Z, ALPHA, PSI, objective=objective)
    assert loss.item() == pytest.approx(EXPECTED_LOSS[objective], rel=1e-6)
    assert stats["valid"].tolist() == [True, True, False]
    assert stats["length"].tolist() == [2.0, 3.0, 0.0]


def test_gradients_are_finite_and_zero_for_empty_rows():
    policy = POLICY.clone().requires_grad_(True)
    log_z = LOG_Z.clone().requires_grad_(True)
    loss, _ = powerflow_loss(policy, BASE, MASK, log_z, ALPHA, PSI)
    loss.backward()
    # dL/dlogZ_i = 2 r_i / n_valid = (1.8, 2.3, 0)
    torch.testing.assert_close(log_z.grad, torch.tensor([1.8, 2.3, 0.0]))
    # dL/dlogpi_t = 2 r_i / (n_valid |y_i|) on real tokens, 0 on padding and on the empty row
    torch.testing.assert_close(
        policy.grad, torch.tensor([[0.9, 0.9, 0.0], [2.3 / 3, 2.3 / 3, 2.3 / 3], [0.0, 0.0, 0.0]])
    )
    assert torch.isfinite(policy.grad).all()


def test_all_rows_empty_gives_zero_loss_not_nan():
    policy = POLICY.clone().requires_grad_(True)
    loss, stats = powerflow_loss(policy, BASE, torch.zeros_like(MASK), LOG_Z, ALPHA)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(policy.grad, torch.zeros_like(policy))


def test_importance_weights_sequence_and_mean_levels():
    # log pi - log pi_old: row 0 (+0.05, +0.05) -> sum 0.1, mean 0.05 ; row 1 (-0.1 x 3) -> sum -0.3, mean -0.1
    old = POLICY - torch.tensor([[0.05, 0.05, 4.0], [-0.1, -0.1, -0.1], [0.0, 0.0, 0.0]])
    w = tb_importance_weights(POLICY, old, MASK, 0.2, 0.2, "sequence")
    torch.testing.assert_close(w, torch.tensor([math.exp(0.1), 0.8, 1.0]))  # exp(-0.3) = 0.741 is clipped to 0.8
    w = tb_importance_weights(POLICY, old, MASK, 0.2, 0.2, "sequence_mean")
    torch.testing.assert_close(w, torch.tensor([math.exp(0.05), math.exp(-0.1), 1.0]))
    # asymmetric clip range: upper bound 1 + 0.05
    w = tb_importance_weights(POLICY, old, MASK, 0.2, 0.05, "sequence")
    torch.testing.assert_close(w, torch.tensor([1.05, 0.8, 1.0]))
    assert torch.equal(tb_importance_weights(POLICY, None, MASK, 0.2, 0.2), torch.ones(3))
    with pytest.raises(ValueError, match="level"):
        tb_importance_weights(POLICY, old, MASK, 0.2, 0.2, "token")


def test_weighted_loss_and_weights_carry_no_gradient():
    old = POLICY - torch.tensor([[0.05, 0.05, 0.0], [-0.1, -0.1, -0.1], [0.0, 0.0, 0.0]])
    policy = POLICY.clone().requires_grad_(True)
    loss, stats = powerflow_loss(policy, BASE, MASK, LOG_Z, ALPHA, PSI, old_logps=old)
    assert loss.item() == pytest.approx((math.exp(0.1) * 1.8**2 + 0.8 * 2.3**2) / 2, rel=1e-6)
    loss.backward()
    # the weight is detached: the gradient is w * 2 r / (n |y|)
    assert policy.grad[0, 0].item() == pytest.approx(math.exp(0.1) * 0.9, rel=1e-6)
    assert not stats["weight"].requires_grad


def test_extreme_log_ratios_do_not_overflow():
    policy = torch.zeros(2, 400)
    old = torch.cat([torch.full((1, 400), -5.0), torch.full((1, 400), 5.0)])  # sum of log ratios = +-2000
    w = tb_importance_weights(policy, old, torch.ones(2, 400), 0.2, 0.2)
    torch.testing.assert_close(w, torch.tensor([1.2, 0.8]))


@pytest.mark.parametrize("objective", ["la_tb", "tb_traj", "tb_token", "la_tb_exact"])
def test_group_log_z_is_the_residual_minimising_constant(objective):
    torch.manual_seed(0)
    policy, base = -torch.rand(6, 4), -torch.rand(6, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    psi = torch.tensor([0.0, -0.5, 0.0, 0.0, 0.3, -0.5])
    s_pi, s_base, length = (policy * mask).sum(-1), (base * mask).sum(-1), mask.sum(-1).float()
    log_z = group_log_z(s_pi, s_base, length, ALPHA, 3, psi, objective)
    assert log_z.shape == (6,)
    assert torch.equal(log_z[:3], log_z[:1].expand(3)) and torch.equal(log_z[3:], log_z[3:4].expand(3))
    # independent: minimise sum of squared residuals over a grid of constants, per group (empty row 4 left out)
    for rows in ([0, 1, 2], [3, 5]):
        grid = torch.linspace(-20, 20, 400001)
        zeros = torch.zeros(len(rows))
        r0 = tb_residual(policy[rows], base[rows], mask[rows], zeros, ALPHA, psi[rows], objective)
        r1 = tb_residual(policy[rows], base[rows], mask[rows], zeros + 1, ALPHA, psi[rows], objective)
        best = grid[((r0[None, :] + grid[:, None] * (r1 - r0)[None, :]) ** 2).sum(-1).argmin()]
        assert log_z[rows[0]].item() == pytest.approx(best.item(), abs=2e-4)


def test_effective_sample_size_and_k3():
    assert effective_sample_size(torch.tensor([1.0, 1.0, 1.0])).item() == pytest.approx(1.0)
    # (1 + 0.8)^2 / (2 * (1 + 0.64)) = 3.24 / 3.28
    assert effective_sample_size(torch.tensor([1.0, 0.8])).item() == pytest.approx(3.24 / 3.28)
    assert effective_sample_size(torch.tensor([1.0, 0.8, 5.0]), torch.tensor([True, True, False])).item() == (
        pytest.approx(3.24 / 3.28)
    )
    # k3 with base - policy = 0.5: e^0.5 - 0.5 - 1
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-0.5])).item() == pytest.approx(math.exp(0.5) - 1.5)


def test_unknown_objective_raises():
    with pytest.raises(ValueError, match="objective"):
        tb_residual(POLICY, BASE, MASK, LOG_Z, ALPHA, objective="tb_subtraj")


def test_token_balance_suffix_residuals_match_hand_computation():
    """Suffix balance on the rows above with values V(s_t) (row 0's padded value 9 must not matter).
    gap = log pi - 2 log p_base: row 0 (3, 0), row 1 (1.5, 1.5, 1.5); alpha psi = (0, -1).
    Row 0: e = ((0.3 + 3) / 2, (0.5 + 0) / 1) = (1.65, 0.5).
    Row 1: e = ((-0.2 + 4.5 + 1) / 3, (0.1 + 3 + 1) / 2, (0.4 + 1.5 + 1) / 1) = (5.3/3, 2.05, 2.9).
    Loss: per row the mean of e^2, then the mean over the two rows with tokens; e_0 is the la_tb_exact residual.
    Seen to fail with the terminal value alpha psi left out, or with the suffix sums starting after their own token."""
    from trl_powerflow.losses import suffix_balance_residuals

    values = torch.tensor([[0.3, 0.5, 9.0], [-0.2, 0.1, 0.4], [0.0, 0.0, 0.0]])
    residuals, tokens_left = suffix_balance_residuals(POLICY, BASE, MASK, values, ALPHA, PSI)
    expected = torch.tensor([[1.65, 0.5, 0.0], [5.3 / 3, 2.05, 2.9], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(residuals, expected)
    assert tokens_left[:2].tolist() == [[2.0, 1.0, 0.0], [3.0, 2.0, 1.0]]
    loss, stats = powerflow_loss(POLICY, BASE, MASK, values, ALPHA, PSI, objective="token_balance")
    row0, row1 = (1.65**2 + 0.5**2) / 2, ((5.3 / 3) ** 2 + 2.05**2 + 2.9**2) / 3
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    torch.testing.assert_close(stats["residual"], torch.tensor(EXPECTED_RESIDUALS["la_tb_exact"]))
