"""Baselines: the comparison methods' rewards as plain TRL reward functions (supervised, format, label-free)."""

from . import format, label_free, registry, supervised
from .format import *  # noqa: F403
from .label_free import *  # noqa: F403
from .registry import *  # noqa: F403
from .supervised import *  # noqa: F403

__all__ = [*format.__all__, *label_free.__all__, *registry.__all__, *supervised.__all__]
