"""BuPO: internal layer policies through the logit lens, their entropy during training, and bottom-up training."""

from . import logit_lens, trainer
from .logit_lens import *  # noqa: F403
from .trainer import *  # noqa: F403

__all__ = [*logit_lens.__all__, *trainer.__all__]
