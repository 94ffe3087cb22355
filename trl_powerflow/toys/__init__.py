"""Toys: offline tiny models and datasets for tests and smoke runs, and the enumerable toy with its exact targets."""

from . import enumerable, tiny_models
from .enumerable import *  # noqa: F403
from .tiny_models import *  # noqa: F403

__all__ = [*enumerable.__all__, *tiny_models.__all__]
