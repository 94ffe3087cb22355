r"""Baseline rewards of the PowerFlow paper as plain TRL reward functions.

Every reward follows TRL's calling convention::

    func(prompts, completions, completion_ids=..., **kwargs) -> list[float | None]

`completions` are strings, or for conversational prompts lists of messages (``[{"role": "assistant", "content":
...}]``); dataset columns such as ``answer`` arrive as keyword lists aligned with `completions`.

Rewards provided (see each docstring for the formula):

- ``accuracy`` (`accuracy_reward`): supervised verifier reward, needs an ``answer`` column (supervised GRPO).
- ``boxed_format`` (`boxed_format_reward`): the paper's format shaping psi (0 with a ``\boxed{}`` answer, else -0.5).
- ``majority_vote`` (`majority_vote_reward`): TTRL, agreement with the group's majority answer.
- ``semantic_entropy`` (`semantic_entropy_reward`): EMPO, probability of the completion's answer cluster.
- ``self_certainty`` (`SelfCertaintyReward`): Intuitor, mean KL(Uniform || pi(.|prefix)) over completion tokens.
- ``entropy_minimisation`` (`EntropyMinimisationReward`): RENT / EM-RL, minus the mean token entropy.

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

import importlib
import math
import threading
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "REWARD_FUNCS",
    "EntropyMinimisationReward",
    "SelfCertaintyReward",
    "accuracy_reward",
    "answers_equivalent",
    "boxed_format_reward",
    "cluster_answers",
    "completion_text",
    "extract_answer",
    "extract_boxed",
    "get_reward_funcs",
    "group_slices",
    "majority_answer",
    "majority_vote_reward",
    "make_majority_vote_reward",
    "make_semantic_entropy_reward",
    "negative_entropy",
    "prompt_token_ids",
    "reference_answer",
    "self_certainty",
    "semantic_entropy",
    "semantic_entropy_reward",
    "set_reward_model",
]

_BOXED_COMMANDS = ("\\boxed", "\\fbox")


# ----------------------------------------------------------------------------------------------------------------
# Answer extraction and equivalence
# ----------------------------------------------------------------------------------------------------------------


def extract_boxed(text: str | None) -> str | None:
    r"""Content of the LAST ``\boxed{...}`` (or ``\fbox{...}``) in `text`, with balanced (nested) braces.

    ``\boxed 5`` (no braces) yields ``"5"``. If the last one never closes (e.g. a truncated completion), the last
    complete one before it is used; None when there is no complete boxed expression. The content is stripped of
    surrounding whitespace; ``\boxed{}`` gives ``""``.
    """
    if not text:
        return None
    best_start = -1
    for command in _BOXED_COMMANDS:
        start = text.rfind(command)
        while start != -1 and text[start + len(command) : start + len(command) + 1].isalpha():
            start = text.rfind(command, 0, start)  # e.g. "\boxedx" is another command
        best_start = max(best_start, start)
    if best_start == -1:
        return None
    command = next(c for c in _BOXED_COMMANDS if text.startswith(c, best_start))
    i = best_start + len(command)
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        if command == "\\boxed" and text[best_start + len(command)] == " ":  # "\boxed 5"
            token = text[i:].split(maxsplit=1)[0].rstrip("$.,;")
            return token or None
        return _extract_before(text, best_start)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return _extract_before(text, best_start)  # unbalanced: fall back to an earlier, complete one


def _extract_before(text: str, position: int) -> str | None:
    return extract_boxed(text[:position]) if position > 0 else None


def completion_text(completion) -> str:
    """Text of a completion: the string itself, or the content of the last message of a conversational completion.

    Message contents given as a list of parts (``[{"type": "text", "text": ...}]``) are joined.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, Sequence) and len(completion) > 0:
        return completion_text(completion[-1])
    return ""


def extract_answer(completion) -> str | None:
    r"""The answer of a completion (string or messages): `extract_boxed` of its text, None if absent or empty.

    An empty ``\boxed{}`` (e.g. an echo of the instruction "put the answer in \boxed{}") counts as no answer.
    """
    answer = extract_boxed(completion_text(completion))
    return answer if answer else None


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _use_parse_timeout() -> bool:
    # math-verify's timeout relies on signal.alarm, which only works in the main thread.
    return threading.current_thread() is threading.main_thread()


_PARSE_CACHE: dict[str, list] = {}
_PARSE_CACHE_SIZE = 4096


def _parse_math(answer: str) -> list:
    """math-verify parse of a bare answer (wrapped in $...$ so LaTeX and plain expressions both parse); cached."""
    cached = _PARSE_CACHE.get(answer)
    if cached is not None:
        return cached
    from math_verify import parse

    timeout = 5 if _use_parse_timeout() else None
    try:
        parsed = parse(f"${answer}$", parsing_timeout=timeout)
    except Exception:  # math-verify swallows most errors; be safe against the rest
        parsed = []
    if len(_PARSE_CACHE) >= _PARSE_CACHE_SIZE:
        _PARSE_CACHE.clear()
    _PARSE_CACHE[answer] = parsed
    return parsed


def _normalise(answer: str) -> str:
    return "".join(answer.split())


def _is_word(answer: str) -> bool:
    # Multi-letter plain words ("yes", "Paris"): math-verify would read them as products of symbols, so that e.g.
    # "listen" and "silent" would match. They are compared as case-insensitive strings instead.
    stripped = answer.replace(" ", "")
    return len(stripped) > 1 and stripped.isascii() and stripped.isalpha()


def answers_equivalent(a: str | None, b: str | None) -> bool:
    r"""Whether two extracted answers are the same: equal up to whitespace, or equivalent for math-verify.

    ``\frac{1}{2}``, ``0.5`` and ``1/2`` are equivalent; None (no answer) is equivalent to nothing, not even None.
    Plain multi-letter words are compared as case-insensitive strings (math-verify would treat them as products).
    """
    if a is None or b is None:
        return False
    if _normalise(a) == _normalise(b):
        return True
    if _is_word(a) or _is_word(b):
        return _normalise(a).lower() == _normalise(b).lower()
    parsed_a, parsed_b = _parse_math(a), _parse_math(b)
    if not parsed_a or not parsed_b:
        return False
    from math_verify import verify

    timeout = 5 if _use_parse_timeout() else None
    try:
        return bool(verify(parsed_b, parsed_a, timeout_seconds=timeout))
    except Exception:
        return False


def reference_answer(reference) -> str | None:
    r"""A reference label as a bare answer: str() of it, or the content of its last ``\boxed{}`` if it has one."""
    if reference is None:
        return None
    reference = str(reference)
    boxed = extract_boxed(reference)
    return boxed if boxed is not None else reference.strip()


# ----------------------------------------------------------------------------------------------------------------
# Label-based and format rewards
# ----------------------------------------------------------------------------------------------------------------


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


def boxed_format_reward(prompts, completions, **kwargs) -> list[float]:
    r"""Format shaping psi of the paper: psi = 0.0 if the completion has a ``\boxed{...}`` answer, else -0.5.

    (An empty ``\boxed{}`` does not count, see `extract_answer`.)
    """
    return [0.0 if extract_answer(c) is not None else -0.5 for c in completions]


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


def cluster_answers(answers: Sequence[str | None]) -> list[int | None]:
    """Cluster ids of answers by equivalence (`answers_equivalent`); None answers get cluster None.

    Greedy and order-dependent (deterministic): each answer joins the first existing cluster whose first member it
    is equivalent to, otherwise opens a new cluster. Cluster ids are numbered by first appearance (0, 1, ...).
    """
    representatives: list[str] = []
    ids: list[int | None] = []
    for answer in answers:
        if answer is None:
            ids.append(None)
            continue
        for cluster_id, representative in enumerate(representatives):
            if answers_equivalent(answer, representative):
                ids.append(cluster_id)
                break
        else:
            representatives.append(answer)
            ids.append(len(representatives) - 1)
    return ids


def _cluster_counts(ids: Sequence[int | None]) -> list[int]:
    counts = [0] * (max((i for i in ids if i is not None), default=-1) + 1)
    for i in ids:
        if i is not None:
            counts[i] += 1
    return counts


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The majority answer among the non-None answers (clustered by equivalence), or None when there is none.

    Ties between clusters of equal size go to the cluster whose first member appears earliest; the returned answer is
    that first member.
    """
    ids = cluster_answers(answers)
    counts = _cluster_counts(ids)
    if not counts:
        return None
    best = max(range(len(counts)), key=lambda c: (counts[c], -c))  # largest, then earliest first appearance
    return answers[ids.index(best)]


def _majority_vote_group(answers: Sequence[str | None]) -> list[float]:
    ids = cluster_answers(answers)
    counts = _cluster_counts(ids)
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
    counts = _cluster_counts(cluster_answers(answers))
    total = sum(counts)
    if total == 0:
        return 0.0
    return float(-sum((n / total) * math.log(n / total) for n in counts if n > 0)) + 0.0


def _semantic_entropy_group(answers: Sequence[str | None]) -> list[float]:
    ids = cluster_answers(answers)
    counts = _cluster_counts(ids)
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


def prompt_token_ids(tokenizer, prompt, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt as TRL's GRPO tokenizes it for generation.

    Conversational prompts (lists of messages) go through the chat template with ``add_generation_prompt=True``;
    plain strings through the tokenizer with its default special tokens.
    """
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    encoded = tokenizer.apply_chat_template(
        list(prompt), add_generation_prompt=True, tokenize=True, return_dict=True, **(chat_template_kwargs or {})
    )
    ids = encoded["input_ids"]
    if len(ids) > 0 and isinstance(ids[0], list):  # some tokenizers return a batch of one
        ids = ids[0]
    return list(ids)


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


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------

REWARD_FUNCS: dict[str, Callable] = {
    "accuracy": accuracy_reward,
    "boxed_format": boxed_format_reward,
    "majority_vote": majority_vote_reward,
    "semantic_entropy": semantic_entropy_reward,
    "self_certainty": SelfCertaintyReward,
    "entropy_minimisation": EntropyMinimisationReward,
}


def get_reward_funcs(names: Sequence[str] | str, tokenizer=None) -> list[Callable]:
    """Build reward functions from registry names (`REWARD_FUNCS`) or ``"package.module:attribute"`` import strings.

    Classes (the model-based rewards, or an imported class) are instantiated with `tokenizer`, which is then
    required; their ``.model`` must be set after the trainer is built (`set_reward_model`). Unknown names raise a
    ValueError listing the allowed names.
    """
    if isinstance(names, str):
        names = [names]
    funcs = []
    for name in names:
        if name in REWARD_FUNCS:
            func = REWARD_FUNCS[name]
        elif ":" in name:
            func = _import_object(name)
        else:
            raise ValueError(
                f"Unknown reward {name!r}. Allowed names: {sorted(REWARD_FUNCS)}, or an import string "
                "'package.module:function'."
            )
        if isinstance(func, type):
            if tokenizer is None:
                raise ValueError(f"Reward {name!r} is built from the tokenizer: pass `tokenizer=`.")
            func = func(tokenizer)
        if not callable(func):
            raise ValueError(f"Reward {name!r} resolved to {func!r}, which is not callable.")
        funcs.append(func)
    return funcs


def _import_object(spec: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"Import string {spec!r} must look like 'package.module:function'.")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Cannot import module {module_name!r} for reward {spec!r}: {error}") from error
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as error:
            raise ValueError(f"Module {module_name!r} has no attribute {attribute!r} (reward {spec!r}).") from error
    return obj
