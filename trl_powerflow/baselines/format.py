r"""Format reward: the paper's shaping term psi for a ``\boxed{}`` answer."""

from __future__ import annotations

from ..data.answers import extract_answer

__all__ = ["boxed_format_reward"]


def boxed_format_reward(prompts, completions, **kwargs) -> list[float]:
    r"""Format shaping psi of the paper: psi = 0.0 if the completion has a ``\boxed{...}`` answer, else -0.5.

    (An empty ``\boxed{}`` does not count, see `extract_answer`.)
    """
    return [0.0 if extract_answer(c) is not None else -0.5 for c in completions]
