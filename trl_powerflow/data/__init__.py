"""Data: prompt datasets (loading and checking them) and the answer parsing shared by rewards and evaluation."""

from . import answers, prompts
from .answers import *  # noqa: F403
from .prompts import *  # noqa: F403

__all__ = [*answers.__all__, *prompts.__all__]
