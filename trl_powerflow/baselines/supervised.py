r"""Supervised baseline reward: verifier accuracy against a reference answer (supervised GRPO)."""

from __future__ import annotations

from ..data.answers import answers_equivalent, extract_answer, reference_answer

__all__ = ["accuracy_reward"]


def accuracy_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
    r"""Supervised verifier reward: r = 1[extract_boxed(completion) ~ answer], else 0.

    `~` is `answers_equivalent` (whitespace-insensitive string match or math-verify equivalence, so ``\frac{1}{2}``
    matches ``0.5``). A completion without a (non-empty) ``\boxed{}`` answer gets 0. The reference comes from the
    dataset column ``answer`` (converted with str(); if it itself contains a ``\boxed{}``, its content is used).
    """
    if answer is None:
        raise ValueError("accuracy_reward needs the reference answers: the dataset must have an `answer` column.")
    if len(answer) != len(completions):
        raise ValueError(f"Got {len(answer)} answers for {len(completions)} completions.")
    rewards = []
    for completion, reference in zip(completions, answer):
        predicted = extract_answer(completion)
        rewards.append(1.0 if answers_equivalent(predicted, reference_answer(reference)) else 0.0)
    return rewards
