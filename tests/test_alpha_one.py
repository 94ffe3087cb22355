"""alpha = 1 is an exact fixed point: the target is the base itself, the policy starts there, so training leaves the
policy bit-identical. This is why `trl-powerflow experiment` does not train alpha 1 in its sweeps and reports the
base in its place.

At alpha 1 every completion's sequence term `sum log pi - sum log p_base` is exactly 0 (the policy and the frozen
base are the same weights, the log-probs of both at temperature 1), so every residual is the head's log Z'. The
data-driven start and the re-centring make that 0, so the policy gradient is 0 and Adam's update is exactly 0 too.

Mutation seen to fail: the base's log-probs scaled by a constant 4 instead of `alpha` in `losses.py` (LA-TB: the
weights move). The control below shows the test can see a move: log Z' started at 1 and not re-centred leaves every
residual at a constant 1, and the policy moves."""

import pytest
import torch
from helpers import powerflow_args

from trl_powerflow import PowerFlowTrainer
from trl_powerflow.toys.tiny_models import tiny_prompt_dataset


def train_alpha_one(model_dir, tmp_path, **kwargs) -> tuple[dict, PowerFlowTrainer]:
    args = powerflow_args(tmp_path, alpha=1.0, max_steps=3, **kwargs)
    trainer = PowerFlowTrainer(model=model_dir, args=args, train_dataset=tiny_prompt_dataset(n=8))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    return before, trainer


@pytest.mark.parametrize("objective", ["la_tb", "la_tb_exact", "token_balance"])
def test_alpha_one_leaves_the_policy_bit_identical(tiny_model_dir, tmp_path, objective):
    before, trainer = train_alpha_one(tiny_model_dir, tmp_path, objective=objective)
    moved = [k for k, p in trainer.model.named_parameters() if not torch.equal(before[k], p)]
    assert not moved, f"{objective}: alpha 1 moved {moved}"


def test_alpha_one_moves_without_the_centred_start(tiny_model_dir, tmp_path):
    """The control: the same run with log Z' started at 1 and not re-centred moves the policy."""
    before, trainer = train_alpha_one(tiny_model_dir, tmp_path, log_z_init=1.0, log_z_recentre=False)
    assert any(not torch.equal(before[k], p) for k, p in trainer.model.named_parameters())
