"""log Z'(q) is one interface (`trl_powerflow.log_z.LogZEstimator`): the trainer asks it for log Z and never asks
which estimator it has, so a third estimator plugs in without touching the trainer."""

import ast
from pathlib import Path

import torch
from helpers import logged, powerflow_args

from trl_powerflow import PowerFlowTrainer
from trl_powerflow.log_z import ESTIMATORS, LogZEstimator
from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

TRAINER = Path(__file__).resolve().parents[1] / "trl_powerflow" / "trainer.py"


class ConstantLogZ(LogZEstimator):
    """log Z'(q) = 1.5 for every prompt: no parameters, nothing at generation time."""

    def compute(self, trainer, inputs, request, policy_logps, mask, mode):
        self.calls = getattr(self, "calls", 0) + 1
        return torch.full((mask.size(0),), 1.5, device=mask.device)


class ConstantLogZTrainer(PowerFlowTrainer):
    log_z_estimators = {**ESTIMATORS, "head": ConstantLogZ}


def test_trainer_never_branches_on_the_estimator():
    tree = ast.parse(TRAINER.read_text())
    compared = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any("log_z_estimator" in ast.unparse(part) for part in [node.left, *node.comparators])
    ]
    assert not compared, [ast.unparse(node) for node in compared]


def test_a_new_estimator_plugs_in(tiny_model_dir, tmp_path):
    args = powerflow_args(tmp_path, max_steps=2, logging_steps=1)
    trainer = ConstantLogZTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset())
    assert isinstance(trainer.log_z, ConstantLogZ) and trainer.log_z_head is None
    assert not any("log_z_head" in name for name, _ in trainer.model.named_parameters())
    trainer.train()
    assert trainer.log_z.calls >= 2
    assert all(value == 1.5 for value in logged(trainer, "powerflow/log_z_mean"))
