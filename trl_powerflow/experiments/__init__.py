"""Experiments: the synthetic reasoning and creative tasks, the digit-chain demonstration of `trl-powerflow train`,
and the library behind the commands (`train_run`, `compare`, `bupo_compare`, `pretraining`, `small_scale`,
`evidence` and its report; imported on their own, not here)."""

from . import demo, synthetic_tasks
from .demo import *  # noqa: F403
from .synthetic_tasks import *  # noqa: F403

__all__ = [*demo.__all__, *synthetic_tasks.__all__]
