"""Long runs fail loudly: a non-finite loss, residual or log Z' stops training before the update with an error naming
the step, the likely causes and the last good checkpoint; a large residual or a collapsed ESS is a warning with the
numbers. Each is checked with an injected fault."""

import logging

import pytest
import torch
from helpers import powerflow_args
from transformers import TrainerCallback

from trl_powerflow import PowerFlowTrainer
from trl_powerflow.toys.tiny_models import tiny_prompt_dataset


class PoisonBase:
    """From the given step on, add +-value (alternating rows) to the per-token log-probs `key` of each generation
    batch: NaN, a spread far beyond the target (p_base), or one far off-policy row (pi_old, with `only_first`)."""

    def __init__(self, trainer, step, value, key="base_per_token_logps", only_first=False):
        self.original = trainer._generate_and_score_completions
        self.trainer, self.step, self.value, self.key, self.only_first = trainer, step, value, key, only_first
        trainer._generate_and_score_completions = self

    def __call__(self, inputs):
        output = self.original(inputs)
        if self.trainer.state.global_step >= self.step:
            logps = output[self.key]
            sign = (-1.0) ** torch.arange(logps.size(0), dtype=logps.dtype).unsqueeze(1)
            if self.only_first:
                sign = (torch.arange(logps.size(0)) == 0).to(logps.dtype).unsqueeze(1)
            output[self.key] = logps + self.value * sign
        return output


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("fault", ["nan_base", "inf_psi"])
def test_non_finite_values_stop_training_before_the_update(tiny_model_dir, tmp_path, fault):
    args = powerflow_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    reward_funcs = None
    if fault == "inf_psi":

        def reward_funcs(completions, trainer_state=None, **kwargs):  # psi(y) = inf from step 2 on
            return [float("inf") if trainer_state.global_step >= 2 else 0.0] * len(completions)

    trainer = PowerFlowTrainer(
        model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset(n=16), reward_funcs=reward_funcs
    )
    if fault == "nan_base":
        PoisonBase(trainer, step=2, value=float("nan"))
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append(params(trainer))

    trainer.add_callback(Snapshot())
    with pytest.raises(FloatingPointError, match="train step 3") as error:
        trainer.train()
    message = str(error.value)
    assert "TB residual" in message and "learning rate" in message
    assert "checkpoint-2" in message  # the last good checkpoint
    assert trainer.state.global_step == 2 and len(snapshots) == 2
    after = params(trainer)
    assert all(torch.equal(after[n], snapshots[-1][n]) for n in after)  # the poisoned step changed nothing
    assert all(torch.isfinite(p).all() for p in after.values())


def warnings_of(trainer, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_powerflow"):
        trainer.train()
    return [r.getMessage() for r in caplog.records if r.name.startswith("trl_powerflow.")]


def test_large_residual_is_a_warning_with_the_numbers(tiny_model_dir, tmp_path, caplog):
    args = powerflow_args(tmp_path)
    trainer = PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset())
    PoisonBase(trainer, step=0, value=50.0)  # |residual| ~ alpha * 50 on every completion, whatever log Z'
    messages = warnings_of(trainer, caplog)
    assert any("train step 1: mean |TB residual| = 200 (> 10" in m for m in messages), messages


def test_collapsed_ess_is_a_warning_with_the_numbers(tiny_model_dir, tmp_path, caplog):
    """One reused completion whose pi_old is e^-20 times its pi (the clamp) carries all the unclipped weight."""
    args = powerflow_args(tmp_path, num_iterations=2, per_device_train_batch_size=8, gradient_checkpointing=False)
    trainer = PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset())
    PoisonBase(trainer, step=0, value=-10.0, key="old_per_token_logps", only_first=True)
    messages = warnings_of(trainer, caplog)
    assert any(
        "effective sample size of the unclipped pi/pi_old =" in m and "over 8 completions" in m for m in messages
    ), messages
    assert trainer.state.log_history[0]["powerflow/ess_unclipped"] < 0.2
