"""Data: prompt datasets (loading and checking them) and the answer parsing shared by rewards and evaluation."""

from .answers import (
    answers_equivalent,
    cluster_answers,
    cluster_counts,
    completion_text,
    extract_answer,
    extract_boxed,
    majority_answer,
    prompt_token_ids,
    reference_answer,
)
from .prompts import check_prompt_dataset, edit_prompt, held_out_prompts, load_prompt_dataset, load_split

__all__ = [
    "answers_equivalent",
    "check_prompt_dataset",
    "cluster_answers",
    "cluster_counts",
    "completion_text",
    "edit_prompt",
    "extract_answer",
    "extract_boxed",
    "held_out_prompts",
    "load_prompt_dataset",
    "load_split",
    "majority_answer",
    "prompt_token_ids",
    "reference_answer",
]
