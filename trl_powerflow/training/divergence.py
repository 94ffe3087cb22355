r"""The divergence guard: a sustained rise of the live distance to the target stops a run that is leaving it.

Watched: `powerflow/target_kl` (the live KL estimate, logged for `la_tb` at temperature 1), else
`powerflow/residual_abs_mean`. With m_t the median of the last `window` logged values and b_t = min_{s <= t} m_s
(the best so far), the run diverges at the first t where m > `factor` * b and m > b + `margin` for `patience`
consecutive logs. The median ignores single spikes; the ratio is to the run's own best, and the margin (0.5 nat of
KL, 0.05 of |residual|) keeps a run sitting at its target (alpha 1: KL ~ 0) from firing on rounding. On
`divergence_action`: "warn" logs the numbers (with the gradient norm over the same logs), "stop" also ends
training, "restore" also loads the last checkpoint saved at or before the best step, then ends training, "off"
watches nothing.
"""

import math
import os
import statistics

from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

WATCHED = {"powerflow/target_kl": 0.5, "powerflow/residual_abs_mean": 0.05}  # metric -> margin
ACTIONS = ("warn", "stop", "restore", "off")


class DivergenceDetector:
    """Feed one logged value at a time (`update`); returns True once, when the rise becomes sustained."""

    def __init__(self, window: int = 5, factor: float = 3.0, patience: int = 3, margin: float = 0.0):
        self.window, self.factor, self.patience, self.margin = window, factor, patience, margin
        self.values, self.steps, self.best, self.best_step, self.above, self.fired = [], [], None, None, 0, False

    def update(self, step: int, value: float) -> bool:
        self.values.append(value)
        self.steps.append(step)
        if len(self.values) < self.window or self.fired:
            return False
        self.median = statistics.median(self.values[-self.window :])
        if self.best is None or self.median < self.best:
            self.best, self.best_step = self.median, step
        rising = self.median > self.factor * self.best and self.median > self.best + self.margin
        self.above = self.above + 1 if rising else 0
        self.fired = self.above >= self.patience
        return self.fired


def divergence_step(steps, values, **settings):
    """The step at which `DivergenceDetector` fires on a logged series, or None (for recorded runs)."""
    detector = DivergenceDetector(**settings)
    return next((step for step, value in zip(steps, values) if detector.update(step, value)), None)


class DivergenceGuard(TrainerCallback):
    """Watches the train logs of a `PowerFlowTrainer` (`divergence_action`, see the module docstring)."""

    def __init__(self, trainer):
        self.trainer, self.action = trainer, trainer.args.divergence_action
        self.detector, self.metric, self.grad_norms = None, None, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if self.metric is None:
            self.metric = next((name for name in WATCHED if name in logs), None)
            if self.metric is not None:
                self.detector = DivergenceDetector(margin=WATCHED[self.metric])
        value = logs.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or any(k.startswith("eval_") for k in logs):
            return  # not logged this time (e.g. every completion masked), or an eval log
        self.grad_norms.append(logs.get("grad_norm"))
        if not self.detector.update(state.global_step, float(value)):
            return
        d = self.detector
        norms = [n for n in self.grad_norms[-d.window :] if n is not None]
        message = (
            f"PowerFlow is diverging at step {state.global_step}: the median of the last {d.window} logged "
            f"`{self.metric}` is {d.median:.4g}, {d.median / d.best:.1f}x its best {d.best:.4g} (step {d.best_step}), "
            f"for {d.patience} logs in a row; gradient norm over those logs {norms}. Lower the learning rate or move "
            "alpha towards 1."
        )
        if self.action in ("stop", "restore"):
            control.should_training_stop = True
        if self.action == "restore":
            checkpoint = last_checkpoint_at_or_before(args.output_dir, d.best_step)
            if checkpoint is None:
                message += f" No checkpoint at or before step {d.best_step} to restore: training stopped as it is."
            else:
                self.trainer._load_from_checkpoint(checkpoint)
                self.trainer.restored_checkpoint = checkpoint
                message += f" Restored {checkpoint} and stopped."
        elif self.action == "stop":
            message += " Training stopped (divergence_action='stop')."
        logger.warning(message)
        self.trainer.divergence_message = message


def last_checkpoint_at_or_before(output_dir: str, step: int) -> str | None:
    """The checkpoint-<n> directory of `output_dir` with the largest n <= step."""
    if not os.path.isdir(output_dir):
        return None
    steps = [int(name.split("-")[1]) for name in os.listdir(output_dir) if name.startswith("checkpoint-")
             and name.split("-")[1].isdigit() and int(name.split("-")[1]) <= step]  # fmt: skip
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None
