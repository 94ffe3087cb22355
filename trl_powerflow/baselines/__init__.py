"""Baselines: the comparison methods' rewards as plain TRL reward functions (supervised, format, label-free)."""

from .format import boxed_format_reward
from .label_free import (
    EntropyMinimisationReward,
    SelfCertaintyReward,
    group_slices,
    majority_vote_reward,
    make_majority_vote_reward,
    make_semantic_entropy_reward,
    negative_entropy,
    self_certainty,
    semantic_entropy,
    semantic_entropy_reward,
    set_reward_model,
)
from .registry import REWARD_FUNCS, get_reward_funcs
from .supervised import accuracy_reward

__all__ = [
    "REWARD_FUNCS",
    "EntropyMinimisationReward",
    "SelfCertaintyReward",
    "accuracy_reward",
    "boxed_format_reward",
    "get_reward_funcs",
    "group_slices",
    "majority_vote_reward",
    "make_majority_vote_reward",
    "make_semantic_entropy_reward",
    "negative_entropy",
    "self_certainty",
    "semantic_entropy",
    "semantic_entropy_reward",
    "set_reward_model",
]
