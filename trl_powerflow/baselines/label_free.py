r"""Label-free baseline rewards (RLIF): TTRL majority vote, EMPO semantic entropy, Intuitor self-certainty and
entropy minimisation.

Groups. TTRL and EMPO score a completion relative to the other completions of the same prompt. A *group* is a run
of consecutive completions whose prompts are equal (TRL's GRPO sampler repeats each prompt `num_generations` times
in a row, so on one process each run is one prompt's group). The factories `make_majority_vote_reward(G)` /
`make_semantic_entropy_reward(G)` instead cut the batch into fixed chunks of G and check that it divides the batch.
Either way a group must be complete inside one reward call: with several processes choose
`per_device_train_batch_size * steps_per_generation` as a multiple of `num_generations` (or the vote runs over the
part of the group a process holds).

Model-based rewards. `SelfCertaintyReward` and `EntropyMinimisationReward` need the live policy. Build them with the
tokenizer, then after building the trainer attach the model::

    rewards = get_reward_funcs(["self_certainty"], tokenizer=tokenizer)
    trainer = GRPOTrainer(model=..., reward_funcs=rewards, ...)
    set_reward_model(rewards, trainer.model)  # i.e. rewards[0].model = trainer.model
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..data.answers import cluster_answers, cluster_counts, completion_text, extract_answer, prompt_token_ids

__all__ = [
    "EntropyMinimisationReward",
    "SelfCertaintyReward",
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


# ----------------------------------------------------------------------------------------------------------------
# Group rewards: TTRL (majority vote) and EMPO (semantic entropy)
# ----------------------------------------------------------------------------------------------------------------


def group_slices(prompts: Sequence, num_generations: int | None = None) -> list[slice]:
    """Slices of the batch forming the groups of completions of one prompt.

    With `num_generations` None, a group is a maximal run of consecutive equal prompts (what TRL's GRPO sampler
    produces); otherwise fixed consecutive chunks of `num_generations`, which must divide the batch size.
    """
    n = len(prompts)
    if num_generations is not None:
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}.")
        if n % num_generations:
            raise ValueError(
                f"The batch of {n} completions is not a whole number of groups of num_generations={num_generations}:"
                " every group of completions of one prompt must be complete in each reward call."
            )
        return [slice(i, i + num_generations) for i in range(0, n, num_generations)]
    slices, start = [], 0
    for i in range(1, n + 1):
        if i == n or prompts[i] != prompts[start]:
            slices.append(slice(start, i))
            start = i
    return slices


def _majority_vote_group(answers: Sequence[str | None]) -> list[float]:
    ids = cluster_answers(answers)
    counts = cluster_counts(ids)
    if not counts:
        return [0.0] * len(answers)
    best = max(range(len(counts)), key=lambda c: (counts[c], -c))
    return [1.0 if i == best else 0.0 for i in ids]


def _group_rewards(prompts, completions, num_generations, group_fn) -> list[float]:
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts for {len(completions)} completions.")
    answers = [extract_answer(c) for c in completions]
    rewards: list[float] = []
    for group in group_slices(prompts, num_generations):
        rewards.extend(group_fn(answers[group]))
    return rewards


def majority_vote_reward(prompts, completions, **kwargs) -> list[float]:
    r"""TTRL reward: r_i = 1[a_i ~ majority(a_1..a_G)], a_i = extract_answer(completion_i), in each group.

    Groups are runs of consecutive equal prompts (see the module docstring; `make_majority_vote_reward(G)` uses fixed
    chunks instead). Answers are clustered by equivalence (`cluster_answers`, math-verify aware); the majority is the
    largest cluster, ties broken in favour of the cluster whose first member comes first in the group. Completions
    without a boxed answer get 0 and do not vote; a group without any answer gets all 0.
    """
    return _group_rewards(prompts, completions, None, _majority_vote_group)


def make_majority_vote_reward(num_generations: int) -> Callable[..., list[float]]:
    """`majority_vote_reward` with fixed groups of `num_generations` consecutive completions (checked to divide)."""

    def majority_vote_reward_fixed(prompts, completions, **kwargs) -> list[float]:
        return _group_rewards(prompts, completions, num_generations, _majority_vote_group)

    majority_vote_reward_fixed.__name__ = "majority_vote_reward"
    majority_vote_reward_fixed.__doc__ = majority_vote_reward.__doc__
    return majority_vote_reward_fixed


def semantic_entropy(answers: Sequence[str | None]) -> float:
    """Semantic entropy -sum_c p_c log p_c (nats) of the answers' equivalence clusters.

    p_c = |c| / (number of non-None answers): None answers are excluded. 0.0 when there is at most one cluster
    (or no answer at all).
    """
    counts = cluster_counts(cluster_answers(answers))
    total = sum(counts)
    if total == 0:
        return 0.0
    return float(-sum((n / total) * math.log(n / total) for n in counts if n > 0)) + 0.0


def _semantic_entropy_group(answers: Sequence[str | None]) -> list[float]:
    ids = cluster_answers(answers)
    counts = cluster_counts(ids)
    size = len(answers)
    return [0.0 if i is None else counts[i] / size for i in ids]


def semantic_entropy_reward(prompts, completions, **kwargs) -> list[float]:
    r"""EMPO reward: r_i = p(c(i)) = |c(i)| / G, the empirical probability of completion i's answer cluster.

    Within each group of G completions (runs of consecutive equal prompts; `make_semantic_entropy_reward(G)` for fixed
    chunks), answers extracted with `extract_answer` are clustered by equivalence (`cluster_answers`: math-verify
    equivalence when both parse, else whitespace-insensitive string match). Completions without an answer are
    excluded from the clusters and get 0, but still count in G, so answering is never worse than not answering.
    Maximising E[p(c)] minimises the semantic entropy -sum_c p_c log p_c of the group (see `semantic_entropy`).
    """
    return _group_rewards(prompts, completions, None, _semantic_entropy_group)


def make_semantic_entropy_reward(num_generations: int) -> Callable[..., list[float]]:
    """`semantic_entropy_reward` with fixed groups of `num_generations` consecutive completions (checked to divide)."""

    def semantic_entropy_reward_fixed(prompts, completions, **kwargs) -> list[float]:
        return _group_rewards(prompts, completions, num_generations, _semantic_entropy_group)

    semantic_entropy_reward_fixed.__name__ = "semantic_entropy_reward"
    semantic_entropy_reward_fixed.__doc__ = semantic_entropy_reward.__doc__
    return semantic_entropy_reward_fixed


# ----------------------------------------------------------------------------------------------------------------
# Token-distribution rewards: Intuitor (self-certainty) and entropy minimisation
# ----------------------------------------------------------------------------------------------------------------


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean(dim=-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def self_certainty(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Intuitor self-certainty: mean_t KL(U || p_t) = mean_t [ -log V - (1/V) sum_v log p_t(v) ].

    `logits`: (..., T, V), where position t holds the next-token logits that predict completion token t (i.e. already
    shifted); `mask`: (..., T), 1 for completion tokens (None: all). Returns (...,) in nats; rows with no token give
    0. Uniform logits give 0; the more peaked p_t, the larger.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    vocab_size = logits.shape[-1]
    per_token = -math.log(vocab_size) - log_probs.mean(dim=-1)
    return _masked_mean(per_token, mask)


def negative_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy-minimisation reward: -mean_t H(p_t), H(p) = -sum_v p(v) log p(v) (nats).

    Same `logits` / `mask` conventions as `self_certainty`. Uniform logits give -log V; rows with no token give 0.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return -_masked_mean(entropy, mask)


class _TokenDistributionReward:
    """Base of the rewards computed from the policy's next-token distributions over the completion tokens."""

    __name__ = "token_distribution_reward"

    def __init__(
        self,
        tokenizer,
        model=None,
        batch_size: int = 4,
        temperature: float = 1.0,
        chat_template_kwargs: dict | None = None,
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.tokenizer = tokenizer
        self.model = model
        self.batch_size = batch_size
        self.temperature = temperature
        self.chat_template_kwargs = chat_template_kwargs or {}

    def score(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        if self.model is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the policy: set `reward.model = trainer.model` after building the "
                "trainer (or use `set_reward_model(reward_funcs, trainer.model)`)."
            )
        if completion_ids is None:
            completion_ids = [
                self.tokenizer(completion_text(c), add_special_tokens=False)["input_ids"] for c in completions
            ]
        if len(completion_ids) != len(prompts):
            raise ValueError(f"Got {len(prompts)} prompts for {len(completion_ids)} completions.")
        prompt_ids = [prompt_token_ids(self.tokenizer, p, self.chat_template_kwargs) for p in prompts]
        completion_ids = [list(c) for c in completion_ids]
        rewards: list[float | None] = []
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(prompts), self.batch_size):
                    stop = start + self.batch_size
                    rewards.extend(self._score_batch(prompt_ids[start:stop], completion_ids[start:stop]))
        finally:
            model.train(was_training)
        return rewards

    def _score_batch(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[float | None]:
        # Row layout: [left pad | prompt | completion | right pad], every completion starting at the same column, so
        # the logits predicting completion tokens are the last (max_completion + 1) positions minus the final one.
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        max_prompt = max(len(p) for p in prompt_ids)
        max_completion = max(len(c) for c in completion_ids)
        if max_completion == 0:
            return [None] * len(prompt_ids)
        rows, masks = [], []
        for p, c in zip(prompt_ids, completion_ids):
            left, right = max_prompt - len(p), max_completion - len(c)
            rows.append([pad_id] * left + p + c + [pad_id] * right)
            masks.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
        device = _model_device(self.model)
        input_ids = torch.tensor(rows, dtype=torch.long, device=device)
        attention_mask = torch.tensor(masks, dtype=torch.long, device=device)
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=max_completion + 1,
        )
        logits = outputs.logits[:, -(max_completion + 1) : -1, :] / self.temperature
        completion_mask = attention_mask[:, max_prompt:]
        scores = []
        for i, c in enumerate(completion_ids):  # one row at a time: the (T, V) float32 temporaries can be large
            scores.append(None if len(c) == 0 else float(self.score(logits[i], completion_mask[i])))
        return scores


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


class SelfCertaintyReward(_TokenDistributionReward):
    """Intuitor reward: self-certainty of the live policy, mean_t KL(U || pi(.|x, y_<t)) over completion tokens.

    Construct with the tokenizer; set ``.model = trainer.model`` after building the trainer. Prompt + completion are
    re-tokenized as TRL does (chat template with ``add_generation_prompt=True`` for conversational prompts, plain
    tokenization otherwise; the completion from the ``completion_ids`` kwarg) and scored under ``torch.no_grad()``
    in eval mode (the previous train/eval mode is restored). Logits are divided by `temperature` (use the sampling
    temperature to score the sampling distribution). A completion with no token gets None.
    """

    __name__ = "self_certainty"

    def score(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self_certainty(logits, mask)


class EntropyMinimisationReward(_TokenDistributionReward):
    """RENT / EM-RL reward: -mean_t H(pi(.|x, y_<t)) over completion tokens, from the live policy.

    Same construction and conventions as `SelfCertaintyReward` (set ``.model = trainer.model``).
    """

    __name__ = "entropy_minimisation"

    def score(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return negative_entropy(logits, mask)


def set_reward_model(reward_funcs, model) -> None:
    """Set ``.model = model`` on every model-based reward (`SelfCertaintyReward`, ...) in `reward_funcs`."""
    if not isinstance(reward_funcs, (list, tuple)):
        reward_funcs = [reward_funcs]
    for func in reward_funcs:
        if isinstance(func, _TokenDistributionReward):
            func.model = model
