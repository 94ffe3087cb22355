"""What the one-pass sampler (`generation`) and the power sampler (`power_sampling`) share: a model's EOS token ids,
its device, and the decoding of a generated row up to its first EOS."""

from __future__ import annotations

import torch

__all__ = ["decode_completion", "eos_token_ids", "model_device"]


def eos_token_ids(model, tokenizer) -> list[int]:
    """Sorted EOS token ids of the model's generation config and of the tokenizer; ValueError when neither has one."""
    ids = set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("Neither the model's generation config nor the tokenizer defines an EOS token.")
    return sorted(ids)


def model_device(model) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def decode_completion(tokenizer, row: list[int], eos_ids: set[int]) -> dict:
    """``{"text", "num_tokens", "truncated"}`` of one generated row: text decoded up to the first EOS (special tokens
    skipped), tokens up to and including that EOS, and whether there was no EOS."""
    end = next((i for i, token in enumerate(row) if token in eos_ids), None)
    tokens = row if end is None else row[:end]
    return {
        "text": tokenizer.decode(tokens, skip_special_tokens=True),
        "num_tokens": len(row) if end is None else end + 1,
        "truncated": end is None,
    }
