"""Power sampling on the enumerable toy (prompt "q", max length 3, 40 completions), against exact references:

- the MH kernel written from the documented acceptance ratio, built exactly as a 40 x 40 matrix, leaves p^alpha
  invariant (and would not without the |y|/|y'| factor);
- the sampler's empirical distribution matches the exact distribution after M steps (q K^M) and approaches p^alpha,
  far closer than the naive temperature-1/alpha sampler, whose exact distribution q is computed too;
- its cost accounting and log-probs, and the evaluation-harness wrapper.
"""

import inspect
import math

import pytest
import torch
from helpers import run_evaluate_script
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_powerflow.evaluation import evaluate_model, evaluate_power_sampling, generate_completions
from trl_powerflow.evaluation.power_sampling import (
    _sample_suffixes,
    mh_log_acceptance,
    power_sample,
    power_sampling_completions,
)
from trl_powerflow.toys.enumerable import TOY_TOKENS, completion_logprobs, enumerate_completions
from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

MAX_LEN = 3
PROMPT = [TOY_TOKENS.index("q")]
EOS = TOY_TOKENS.index("<eos>")


class ToyOracle:
    """Exact next-token log-probs of every prefix of the toy's completions, at temperature 1 and 1/alpha."""

    def __init__(self, model, alpha):
        self.alpha = alpha
        self.completions = enumerate_completions(MAX_LEN)
        self.index = {tuple(c): i for i, c in enumerate(self.completions)}
        prefixes = sorted({tuple(c[:j]) for c in self.completions for j in range(len(c))}, key=len)
        self.logits = {}
        with torch.no_grad():
            for prefix in prefixes:
                self.logits[prefix] = model(input_ids=torch.tensor([PROMPT + list(prefix)])).logits[0, -1].double()

    def suffix(self, y, t, scale=1.0):
        """sum_{j >= t} log softmax(scale * logits(y_<j))[y_j]."""
        return sum(torch.log_softmax(scale * self.logits[tuple(y[:j])], -1)[y[j]].item() for j in range(t, len(y)))

    def log_p(self):
        return torch.tensor([self.suffix(y, 0) for y in self.completions], dtype=torch.float64)

    def log_q(self):
        return torch.tensor([self.suffix(y, 0, self.alpha) for y in self.completions], dtype=torch.float64)

    def kernel(self, length_factor=True):
        """Exact MH transition matrix: t ~ U{0..|y|-1}, suffix ~ q, acceptance from `mh_log_acceptance`."""
        n, a = len(self.completions), self.alpha
        kernel = torch.zeros(n, n, dtype=torch.float64)
        for i, y in enumerate(self.completions):
            for t in range(len(y)):
                for j, y2 in enumerate(self.completions):
                    if len(y2) <= t or y2[:t] != y[:t]:
                        continue
                    log_a = mh_log_acceptance(
                        a,
                        self.suffix(y2, t),
                        self.suffix(y2, t, a),
                        self.suffix(y, t),
                        self.suffix(y, t, a),
                        len(y2),
                        len(y),
                    )
                    if not length_factor:
                        log_a += math.log(len(y2)) - math.log(len(y))
                    kernel[i, j] += math.exp(self.suffix(y2, t, a)) / len(y) * min(1.0, math.exp(log_a))
            kernel[i, i] += 1.0 - kernel[i].sum()
        return kernel


def tv(a, b):
    return 0.5 * (a - b).abs().sum().item()


@pytest.fixture(scope="module")
def toy(toy_model_dir):
    return AutoModelForCausalLM.from_pretrained(toy_model_dir).eval()


@pytest.mark.parametrize("alpha", [2.0, 0.5])
def test_exact_kernel_leaves_the_power_distribution_invariant(toy, alpha):
    oracle = ToyOracle(toy, alpha)
    target = torch.softmax(alpha * oracle.log_p(), 0)
    kernel = oracle.kernel()
    assert torch.allclose(kernel.sum(1), torch.ones(40, dtype=torch.float64)) and (kernel >= 0).all()
    assert (target @ kernel - target).abs().max().item() < 1e-12
    # without the |y| / |y'| factor of the uniform position choice the chain is biased
    assert (target @ oracle.kernel(length_factor=False) - target).abs().max().item() > 1e-3


def empirical(oracle, completions):
    counts = torch.zeros(len(oracle.completions), dtype=torch.float64)
    for c in completions:
        counts[oracle.index[tuple(c)]] += 1
    return counts / counts.sum()


def test_empirical_distribution_approaches_the_exact_power_distribution(toy):
    alpha, steps, chains = 2.0, 16, 3000
    oracle = ToyOracle(toy, alpha)
    log_p = oracle.log_p()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(log_p, completion_logprobs(toy, PROMPT, oracle.completions), atol=1e-5)
    target = torch.softmax(alpha * log_p, 0)
    q = oracle.log_q().exp()  # the naive sampler: temperature 1/alpha, exact distribution
    after = q @ torch.linalg.matrix_power(oracle.kernel(), steps)  # exact distribution of the sampler after M steps

    result = power_sample(
        toy, [PROMPT] * chains, alpha, MAX_LEN, num_mcmc_steps=steps, eos_token_id=EOS, seed=0, batch_size=chains
    )
    emp = empirical(oracle, result.completions)
    naive_tv, exact_tv, emp_tv = tv(q, target), tv(after, target), tv(emp, target)
    assert naive_tv > 0.15  # the temperature sampler is clearly biased on this toy
    assert exact_tv < 0.03  # the chain converges (exact)
    assert tv(emp, after) < 0.05  # the implementation samples the exact chain (noise of 3000 draws: ~0.03)
    assert emp_tv < 0.05 and emp_tv < naive_tv / 3, (emp_tv, naive_tv)
    assert 0.3 < result.acceptance_rate < 1.0
    # the same seed gives the same chains
    again = power_sample(toy, [PROMPT] * 50, alpha, MAX_LEN, num_mcmc_steps=2, eos_token_id=EOS, seed=1)
    assert (
        again.completions
        == power_sample(toy, [PROMPT] * 50, alpha, MAX_LEN, num_mcmc_steps=2, eos_token_id=EOS, seed=1).completions
    )


def test_block_schedule_and_cost_accounting(toy):
    alpha = 0.5
    oracle = ToyOracle(toy, alpha)
    target = torch.softmax(alpha * oracle.log_p(), 0)
    # no MH step: one proposal sample per chain, cost = its length, log p exact
    plain = power_sample(toy, [PROMPT] * 200, alpha, MAX_LEN, num_mcmc_steps=0, eos_token_id=EOS, seed=0)
    assert plain.forward_passes == [len(c) for c in plain.completions] and plain.proposals == 0
    exact = completion_logprobs(toy, PROMPT, plain.completions)
    assert torch.allclose(torch.tensor(plain.log_p, dtype=torch.float64), exact, atol=1e-5)
    # block size 1: three stages of 4 steps; every chain pays at least its length plus one token per MH step
    blocks = power_sample(
        toy, [PROMPT] * 2000, alpha, MAX_LEN, num_mcmc_steps=4, block_size=1, eos_token_id=EOS, seed=0, batch_size=1000
    )
    assert all(f >= len(c) + 4 for f, c in zip(blocks.forward_passes, blocks.completions))
    assert all(f <= 3 + 12 * 3 for f in blocks.forward_passes)
    assert tv(empirical(oracle, blocks.completions), target) < 0.06
    with pytest.raises(ValueError, match="alpha"):
        power_sample(toy, [PROMPT], 0.0, MAX_LEN, eos_token_id=EOS)


HOSTILE_DEFAULTS = dict(
    do_sample=False, temperature=0.1, top_k=1, top_p=0.1, min_p=0.9, typical_p=0.2, epsilon_cutoff=0.2,
    repetition_penalty=5.0, max_length=2, use_cache=False,
)  # fmt: skip


def test_proposal_ignores_the_models_generation_defaults(toy_model_dir):
    """The proposal is softmax(alpha * logits) over the whole vocabulary, whatever `model.generation_config` holds:
    same seed, same chains as with a clean config, and every proposed token's log q is the exact one."""
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir).eval()
    alpha, kwargs = 2.0, dict(num_mcmc_steps=3, eos_token_id=EOS, seed=0)
    clean = power_sample(model, [PROMPT] * 300, alpha, MAX_LEN, **kwargs)
    for key, value in HOSTILE_DEFAULTS.items():
        setattr(model.generation_config, key, value)
    hostile = power_sample(model, [PROMPT] * 300, alpha, MAX_LEN, **kwargs)
    assert hostile.completions == clean.completions and hostile.log_p == clean.log_p
    assert (hostile.accepted, hostile.forward_passes) == (clean.accepted, clean.forward_passes)
    assert {key: getattr(model.generation_config, key) for key in HOSTILE_DEFAULTS} == HOSTILE_DEFAULTS  # restored
    # these would mask every token of some contexts (the left padding is EOS) and make `generate` fail
    model.generation_config.no_repeat_ngram_size, model.generation_config.min_new_tokens = 1, 2
    model.generation_config.bad_words_ids = [[TOY_TOKENS.index("b")]]
    assert power_sample(model, [PROMPT] * 300, alpha, MAX_LEN, **kwargs).completions == clean.completions

    oracle = ToyOracle(model, alpha)
    torch.manual_seed(0)
    rows = _sample_suffixes(model, [PROMPT] * 2000, [MAX_LEN] * 2000, alpha, {EOS}, EOS)
    likely = {c for c, q in zip(oracle.index, oracle.log_q().exp()) if q > 0.005}  # each missed w.p. < 1e-4
    assert len(likely) > 5 and likely <= {tuple(tokens) for tokens, _, _ in rows}  # full support
    for tokens, log_p, log_q in rows:
        assert sum(log_p) == pytest.approx(oracle.suffix(tokens, 0), abs=1e-5)
        assert sum(log_q) == pytest.approx(oracle.suffix(tokens, 0, alpha), abs=1e-5)


def test_harness_wrapper_has_the_generate_completions_shape(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = tiny_prompt_dataset(n=2)["prompt"]
    groups = power_sampling_completions(
        model, tokenizer, prompts, num_samples=2, max_new_tokens=5, alpha=4.0, mcmc_steps=2, block_size=3
    )
    reference = generate_completions(model, tokenizer, prompts, num_samples=2, max_new_tokens=5)
    assert len(groups) == len(reference) == 2 and all(len(g) == 2 for g in groups)
    for sample in (s for g in groups for s in g):
        assert set(sample) == set(reference[0][0]) | {"forward_passes"}
        assert 1 <= sample["num_tokens"] <= 5 and sample["forward_passes"] >= sample["num_tokens"] + 2
    result = evaluate_power_sampling(
        model,
        tokenizer,
        tiny_prompt_dataset(n=2),
        alpha=4.0,
        mcmc_steps=1,
        num_samples=2,
        max_new_tokens=4,
        embedder=None,
    )
    metrics = result["metrics"]
    assert metrics["avg@2"] is not None and metrics["forward_passes_per_answer"] >= metrics["mean_completion_tokens"]
    assert result["settings"]["method"] == "power_sampling"


@pytest.mark.skipif(
    "method" not in inspect.signature(evaluate_model).parameters,
    reason="--method power_sampling needs the evaluation.py edit of docs/bupo/proposed_edits.patch",
)
def test_evaluate_script_power_sampling_method(tiny_model_dir, tmp_path):
    args = ["--model", tiny_model_dir, "--max_prompts", "2", "--num_samples", "2", "--max_new_tokens", "4"]
    args += ["--method", "power_sampling", "--alpha", "4", "--mcmc_steps", "2", "--embedder", "none"]
    result, stdout = run_evaluate_script(args, tmp_path)
    assert result["settings"]["method"] == "power_sampling" and result["settings"]["mcmc_steps"] == 2
    metrics = result["metrics"]
    assert metrics["forward_passes_per_answer"] >= metrics["mean_completion_tokens"] + 2
    assert "fwd/answer" in stdout
