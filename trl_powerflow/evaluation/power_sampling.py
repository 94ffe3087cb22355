r"""Training-free power sampling (Karan & Du 2025, "Reasoning with Sampling"): Metropolis–Hastings over resampled
suffixes, targeting the alpha-power of the base model.

Target over completions y of a prompt x (each ends at the first EOS or at the length limit):

    pi(y) ∝ p(y | x)^alpha,         p(y | x) = prod_t p(y_t | x, y_<t)     (temperature-1 base model)

Proposal: the base model at temperature 1/alpha, normalised per token,

    q(y_t | x, y_<t) = p(y_t | x, y_<t)^alpha / sum_v p(v | x, y_<t)^alpha        (= softmax(alpha * logits)),

which is *not* pi (the per-token normalisers differ between prefixes: low-temperature sampling is a biased
approximation of the power distribution). One MH step from the current y (length |y|):

1. pick a position t uniformly in {0, ..., |y| - 1};
2. keep y_<t and sample a new suffix y'_{t:} from q until EOS or the length limit: y' = y_<t + y'_{t:};
3. accept y' with probability

       A = min(1, [p(y')^alpha q(y_{t:} | y_<t) / |y'|] / [p(y)^alpha q(y'_{t:} | y_<t) / |y|]),

   computed in log space from per-token log-probs: the shared prefix cancels, so only suffix terms enter,
   log A = alpha * (sum log p(y'_{t:}) - sum log p(y_{t:})) + sum log q(y_{t:}) - sum log q(y'_{t:})
   + log |y| - log |y'|.

Why this ratio: the move is the pair (t, suffix) with density (1/|y|) q(y'_{t:} | y_<t); the reverse move from y'
picks the same t (possible, since |y'| > t) with density (1/|y'|) q(y_{t:} | y_<t). With this A,
pi(y) P_t(y -> y') = min(pi(y) q(y'_{t:}) / |y|, pi(y') q(y_{t:}) / |y'|) is symmetric in (y, y') for every t, so
the chain is reversible with respect to pi. The factor |y| / |y'| (from choosing t uniformly over the *current*
length) is 1 when both completions have the same length — the formula usually quoted,
min(1, p(y')^alpha q(y_{t:}) / [p(y)^alpha q(y'_{t:})]) — but completions that end at different EOS positions
need it: without it the chain is biased towards longer completions.

Block-wise schedule (Karan & Du, Algorithm 1): with `block_size = B`, the completion is built in stages; stage s
first extends the unfinished chain with fresh proposal tokens up to length min(s*B, max_new_tokens), then runs
`num_mcmc_steps` MH steps whose suffixes are capped at that length (intermediate target: p^alpha of completions
truncated there). The last stage targets pi exactly, so the chain's distribution converges to pi with the number of
steps. `block_size=None` is one stage: one proposal sample, then `num_mcmc_steps` MH steps on complete completions.

Cost: every sampled token is one incremental forward pass of the decoder (with its KV cache; the prefill of the
prompt + kept prefix is part of the first one), and p and q of a token come from the same logits, so the MH ratio
needs no extra forward. `forward_passes` counts sampled tokens per answer (kept tokens, up to and including EOS);
one-pass sampling costs `num_tokens` forward passes per answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..data.answers import prompt_token_ids
from .decoding import decode_completion, eos_token_ids, model_device

__all__ = [
    "PowerSamplingResult",
    "mh_log_acceptance",
    "power_sample",
    "power_sampling_completions",
    "toy_comparison",
]


@dataclass
class PowerSamplingResult:
    """Output of `power_sample`: one completion (token ids, EOS included if reached) per chain and its cost."""

    completions: list[list[int]]
    forward_passes: list[int]  # sampled tokens (= incremental forward passes) per chain
    proposals: int = 0
    accepted: int = 0
    log_p: list[float] = field(default_factory=list)  # temperature-1 log p(y | x) of each completion

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposals if self.proposals else float("nan")


def mh_log_acceptance(alpha, logp_new, logq_new, logp_old, logq_old, len_new, len_old) -> float:
    """log of the MH acceptance ratio (before min(1, .)) for replacing the suffix with sums (logp_old, logq_old) of a
    completion of length len_old by one with sums (logp_new, logq_new) and length len_new; see the module doc."""
    return alpha * (logp_new - logp_old) + (logq_old - logq_new) + math.log(len_old) - math.log(len_new)


def _as_list(ids) -> list[int]:
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else ids.tolist())]


@contextmanager
def _without_generation_defaults(model):
    """Hide `model.generation_config` (restored afterwards): `generate` fills every option that the config it is given
    leaves unset (min_p, bad_words_ids, ...) from it, which would change the proposal or cut its support."""
    from transformers import GenerationConfig

    owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's transformers model
    saved = getattr(owner, "generation_config", None)
    if saved is None:
        yield
        return
    owner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        owner.generation_config = saved


@torch.no_grad()
def _sample_suffixes(model, contexts, limits, alpha, eos_ids, pad_id):
    """Sample one suffix per context from q = softmax(alpha * logits), at most `limits[i]` tokens, stopping at EOS.
    Returns per row (tokens, per-token log p, per-token log q). The proposal is plain ancestral sampling at
    temperature 1/alpha over the full vocabulary, whatever the model's own generation defaults are."""
    from transformers import GenerationConfig

    device = model_device(model)
    width = max(len(c) for c in contexts)
    input_ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in contexts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
    config = GenerationConfig(  # every logits processor off (0 / 1.0 / None), except the temperature
        do_sample=True,
        num_beams=1,
        temperature=1.0 / alpha,
        top_k=0,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_length=0,
        max_new_tokens=max(limits),
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids),
        output_logits=True,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with _without_generation_defaults(model):
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    generated = out.sequences[:, width:]
    steps = generated.size(1)
    logits = torch.stack(out.logits[:steps], 1).double()  # raw logits: log p at temperature 1
    scores = torch.stack(out.scores[:steps], 1).double()  # processed scores the sampler drew from: log q
    logp = torch.log_softmax(logits, -1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
    logq = torch.log_softmax(scores, -1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
    rows = []
    generated, logp, logq = generated.tolist(), logp.tolist(), logq.tolist()
    for i, limit in enumerate(limits):
        tokens = generated[i][:limit]
        end = next((j for j, token in enumerate(tokens) if token in eos_ids), None)
        keep = len(tokens) if end is None else end + 1
        rows.append((tokens[:keep], logp[i][:keep], logq[i][:keep]))
    return rows


@torch.no_grad()
def power_sample(
    model,
    prompts: Sequence[Sequence[int]],
    alpha: float,
    max_new_tokens: int,
    num_mcmc_steps: int = 10,
    block_size: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = 0,
    batch_size: int = 64,
) -> PowerSamplingResult:
    """Draw one completion per prompt (token ids; repeat a prompt for several chains) from p^alpha by
    Metropolis–Hastings over resampled suffixes (see the module doc). Deterministic for a given `seed` (the global
    torch RNG state is restored afterwards). `batch_size` chains share each batched `generate` call."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"`alpha` must be a finite number > 0, got {alpha!r}.")
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if num_mcmc_steps < 0:
        raise ValueError(f"`num_mcmc_steps` must be >= 0, got {num_mcmc_steps}.")
    if block_size is not None and block_size < 1:
        raise ValueError(f"`block_size` must be >= 1 or None, got {block_size}.")
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        raise ValueError("No EOS token: pass `eos_token_id`.")
    eos_ids = {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(i) for i in eos_token_id}
    pad_id = int(pad_token_id) if pad_token_id is not None else min(eos_ids)
    prompts = [_as_list(p) for p in prompts]
    block = max_new_tokens if block_size is None else block_size
    caps = [min(stage * block, max_new_tokens) for stage in range(1, math.ceil(max_new_tokens / block) + 1)]

    result = PowerSamplingResult(completions=[], forward_passes=[])
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                _run_chains(
                    model, prompts[start : start + batch_size], alpha, caps, num_mcmc_steps, eos_ids, pad_id, result
                )
    finally:
        model.train(was_training)
    return result


def _run_chains(model, prompts, alpha, caps, num_mcmc_steps, eos_ids, pad_id, result):
    n = len(prompts)
    ys = [[] for _ in range(n)]
    lps = [[] for _ in range(n)]
    lqs = [[] for _ in range(n)]
    cost = [0] * n

    def ended(i, cap):
        return (ys[i] and ys[i][-1] in eos_ids) or len(ys[i]) >= cap

    for cap in caps:
        # extend the unfinished chains with fresh proposal tokens up to the stage's length
        grow = [i for i in range(n) if not ended(i, cap)]
        if grow:
            rows = _sample_suffixes(
                model, [prompts[i] + ys[i] for i in grow], [cap - len(ys[i]) for i in grow], alpha, eos_ids, pad_id
            )
            for i, (tokens, lp, lq) in zip(grow, rows):
                ys[i] += tokens
                lps[i] += lp
                lqs[i] += lq
                cost[i] += len(tokens)
        for _ in range(num_mcmc_steps):
            cut = [int(torch.randint(len(ys[i]), ()).item()) for i in range(n)]
            rows = _sample_suffixes(
                model, [prompts[i] + ys[i][: cut[i]] for i in range(n)], [cap - t for t in cut], alpha, eos_ids, pad_id
            )
            uniforms = torch.rand(n, dtype=torch.float64).tolist()
            for i, (tokens, lp, lq) in enumerate(rows):
                t = cut[i]
                cost[i] += len(tokens)
                log_a = mh_log_acceptance(
                    alpha, sum(lp), sum(lq), sum(lps[i][t:]), sum(lqs[i][t:]), t + len(tokens), len(ys[i])
                )
                result.proposals += 1
                if math.log(max(uniforms[i], 1e-300)) < min(0.0, log_a):
                    ys[i] = ys[i][:t] + tokens
                    lps[i] = lps[i][:t] + lp
                    lqs[i] = lqs[i][:t] + lq
                    result.accepted += 1
    result.completions += ys
    result.forward_passes += cost
    result.log_p += [sum(lp) for lp in lps]


def power_sampling_completions(
    model,
    tokenizer,
    prompts: Sequence,
    num_samples: int = 4,
    max_new_tokens: int = 256,
    alpha: float = 4.0,
    mcmc_steps: int = 10,
    block_size: int | None = None,
    batch_size: int = 8,
    seed: int | None = 0,
    chat_template_kwargs: dict | None = None,
) -> list[list[dict]]:
    """Drop-in for `trl_powerflow.evaluation.generate_completions` (same prompts, same output): `num_samples`
    independent power-sampling chains per prompt. Each sample is ``{"text", "num_tokens", "truncated",
    "forward_passes"}``. `batch_size` counts prompts per batch (each with `num_samples` chains)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    ids = [prompt_token_ids(tokenizer, p, chat_template_kwargs) for p in prompts]
    chains = [prompt for prompt in ids for _ in range(num_samples)]
    result = power_sample(
        model,
        chains,
        alpha=alpha,
        max_new_tokens=max_new_tokens,
        num_mcmc_steps=mcmc_steps,
        block_size=block_size,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        seed=seed,
        batch_size=batch_size * num_samples,
    )
    eos_set = set(eos_ids)
    groups = []
    for p in range(len(prompts)):
        group = []
        for j in range(p * num_samples, (p + 1) * num_samples):
            sample = decode_completion(tokenizer, result.completions[j], eos_set)
            sample["forward_passes"] = result.forward_passes[j]
            group.append(sample)
        groups.append(group)
    return groups


# ------------------------------------------------------------------------------------------------------- toy study
@torch.no_grad()
def toy_comparison(
    model_dir: str, alpha: float = 2.0, mcmc_steps=(0, 2, 4, 8, 16, 32), chains: int = 3000, seed: int = 0
) -> list[dict]:
    """On the enumerable toy (prompt "q", max length 3, 40 completions): total-variation distance to the exact
    p^alpha, probability of its mode ("accuracy" proxy) and forward passes per answer, for the naive
    temperature-1/alpha sampler (exact), power sampling with each number of MH steps (empirical, `chains` chains)
    and the LA-TB fixed point PowerFlow trains towards (exact; one pass per answer)."""
    from transformers import AutoModelForCausalLM

    from ..toys.enumerable import (
        TOY_TOKENS,
        completion_lengths,
        completion_logprobs,
        enumerate_completions,
        la_tb_fixed_point,
        power_target_logprobs,
    )

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = [TOY_TOKENS.index("q")]
    completions = enumerate_completions(3)
    index = {tuple(c): i for i, c in enumerate(completions)}
    lengths = completion_lengths(completions)
    log_p = completion_logprobs(model, prompt, completions)
    target = power_target_logprobs(log_p, alpha).exp()
    mode = int(target.argmax())

    def row(name, dist, cost, exact):
        return {
            "method": name,
            "tv_to_p_alpha": 0.5 * (dist - target).abs().sum().item(),
            "p_mode": dist[mode].item(),
            "forward_passes_per_answer": cost,
            "exact": exact,
        }

    # naive: temperature 1/alpha, exact distribution from the per-token proposal (one pass per answer)
    max_len = 3
    ids = torch.tensor([prompt + c + [0] * (max_len - len(c)) for c in completions])
    mask = torch.tensor([[1] * (1 + len(c)) + [0] * (max_len - len(c)) for c in completions])
    logits = model(input_ids=ids, attention_mask=mask).logits.double()[:, :-1]
    log_q = torch.log_softmax(alpha * logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    q = (log_q * mask[:, 1:]).sum(-1).exp()
    rows = [
        row(f"target p^{alpha:g} (exact)", target, (target * lengths).sum().item(), True),
        row("base model, T=1 (one pass)", log_p.exp(), (log_p.exp() * lengths).sum().item(), True),
        row(f"base model, T=1/{alpha:g} (one pass)", q, (q * lengths).sum().item(), True),
    ]
    for steps in mcmc_steps:
        result = power_sample(
            model,
            [prompt] * chains,
            alpha,
            max_len,
            num_mcmc_steps=steps,
            eos_token_id=0,
            seed=seed,
            batch_size=chains,
        )
        counts = torch.zeros(len(completions), dtype=torch.float64)
        for c in result.completions:
            counts[index[tuple(c)]] += 1
        cost = sum(result.forward_passes) / chains
        rows.append(row(f"power sampling, M={steps}", counts / chains, cost, False))
    fixed = la_tb_fixed_point(log_p, lengths, alpha).exp()  # p^alpha exp(-lambda |y|), normalised by lambda
    rows.append(row("PowerFlow LA-TB fixed point (one pass)", fixed, (fixed * lengths).sum().item(), True))
    return rows
