"""Helpers the multi-process tests import through scripts/train.py (`--reward_funcs module:function`)."""

import time


def slow_zero_reward(completions, **kwargs):
    """psi(y) = 0 for every completion, after a pause: makes a step slow enough to kill a run between checkpoints."""
    time.sleep(0.4)
    return [0.0] * len(completions)
