r"""Synthetic tasks for the small-scale PowerFlow experiment: a verifiable reasoning task and a checkable creative one.

Both tasks are generated in code (no download) and come with their own verifier, so that a tiny model pretrained on
them offline (`scripts/pretrain_tiny_base.py`) can be fine-tuned and evaluated in the same harness as a real model
(`scripts/compare.py`).

**Digit chain (reasoning).** A prompt asks for a chain of additions/subtractions modulo 10::

    Compute 3+4+8-5 mod 10. Put the final answer in \boxed{}.

A worked solution writes one step per operation, joined by interchangeable connectors, and boxes the last result::

    3+4=7, then 7+8=5. 5-5=0. \boxed{0}

The pretraining corpus (`sample_chain_solution`) is noisy on purpose: each written step is wrong with probability
`step_error` (later steps continue from the wrong value, so one slip makes the final answer wrong), and with
probability `guess_prob` the solution skips the steps and boxes a guess (right with probability `guess_accuracy`).
The right answer is therefore the most likely one, but far from certain, and short completions are less accurate
than worked ones. Answers are checked by the package's `accuracy` reward (math-verify on the ``\boxed{}`` content)
against the dataset's ``answer`` column.

**Rhyming couplets (creative).** A prompt asks for a short poem about a topic::

    Write a short poem about the moon.

A poem is two lines ``the ADJ NOUN VERB``; it is *valid* (`poem_checks`) when both lines use the grammar's
vocabulary, the topic is the noun of the first line, and the two verbs rhyme (same rhyme group) and differ. The base
corpus draws valid poems uniformly (plus a fraction of flawed ones); the "aligned" corpus draws only valid poems but
with sharply peaked word preferences, so a model fine-tuned on it keeps the quality and loses most of the diversity.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

__all__ = [
    "ADJECTIVES",
    "CHAIN_CONNECTORS",
    "CHAIN_PROMPT_SUFFIX",
    "NOUNS",
    "POEM_PROMPT_TEMPLATES",
    "RHYME_GROUPS",
    "VERBS",
    "chain_answer",
    "chain_metrics",
    "chain_prompt",
    "chain_rows",
    "creative_rows",
    "parse_chain_solution",
    "parse_poem",
    "poem_checks",
    "poem_metrics",
    "poem_prompt",
    "poem_quality",
    "poem_quality_reward",
    "prompt_topic",
    "sample_aligned_poem",
    "sample_base_poem",
    "sample_chain_problem",
    "sample_chain_solution",
]

# ----------------------------------------------------------------------------------------------------------------
# Digit chain (reasoning)
# ----------------------------------------------------------------------------------------------------------------

CHAIN_PROMPT_SUFFIX = " Put the final answer in \\boxed{}."
CHAIN_CONNECTORS = (". ", ", then ", ", so ")
_STEP_RE = re.compile(r"(\d)\s*([+-])\s*(\d)\s*=\s*(\d)")
_PROMPT_RE = re.compile(r"Compute\s+(\d)((?:\s*[+-]\s*\d)+)\s+mod 10")


def chain_answer(start: int, ops: Sequence[tuple[str, int]]) -> int:
    """The exact result of applying `ops` ((sign, digit) pairs) to `start`, modulo 10."""
    value = start % 10
    for sign, operand in ops:
        if sign not in "+-" or len(sign) != 1:
            raise ValueError(f"Unknown operation {sign!r}; expected '+' or '-'.")
        value = (value + operand) % 10 if sign == "+" else (value - operand) % 10
    return value


def sample_chain_problem(rng: random.Random, min_ops: int = 3, max_ops: int = 5) -> tuple[int, tuple]:
    """A random problem: (start digit 0-9, ((sign, operand 1-9), ...)) with min_ops..max_ops operations."""
    n = rng.randint(min_ops, max_ops)
    start = rng.randint(0, 9)
    ops = tuple((rng.choice("+-"), rng.randint(1, 9)) for _ in range(n))
    return start, ops


def chain_prompt(start: int, ops: Sequence[tuple[str, int]], suffix: str = CHAIN_PROMPT_SUFFIX) -> str:
    """``Compute 3+4+8-5 mod 10.`` followed by `suffix` (the \\boxed{} instruction by default)."""
    expression = f"{start}" + "".join(f"{sign}{operand}" for sign, operand in ops)
    return f"Compute {expression} mod 10.{suffix}"


def parse_chain_prompt(text: str) -> tuple[int, tuple] | None:
    """(start, ops) of a prompt written by `chain_prompt`, or None when it is not one."""
    match = _PROMPT_RE.search(text)
    if match is None:
        return None
    ops = tuple((sign, int(digit)) for sign, digit in re.findall(r"([+-])\s*(\d)", match.group(2)))
    return int(match.group(1)), ops


def _wrong_digit(rng: random.Random, right: int) -> int:
    return rng.choice([d for d in range(10) if d != right])


def sample_chain_solution(
    start: int,
    ops: Sequence[tuple[str, int]],
    rng: random.Random,
    step_error: float = 0.2,
    guess_prob: float = 0.25,
    guess_accuracy: float = 0.3,
    connectors: Sequence[str] = CHAIN_CONNECTORS,
) -> str:
    r"""One noisy solution from the pretraining distribution.

    With probability `guess_prob`: ``\boxed{d}`` alone, d right with probability `guess_accuracy`, else a uniform
    wrong digit. Otherwise one step ``a+b=c`` per operation, where c is wrong (a uniform wrong digit) with
    probability `step_error` and the next step starts from the written c; steps are joined by a connector drawn
    uniformly from `connectors`, and the last written value is boxed.
    """
    right = chain_answer(start, ops)
    if rng.random() < guess_prob:
        guess = right if rng.random() < guess_accuracy else _wrong_digit(rng, right)
        return f"\\boxed{{{guess}}}"
    value = start % 10
    text = ""
    for i, (sign, operand) in enumerate(ops):
        result = chain_answer(value, [(sign, operand)])
        if rng.random() < step_error:
            result = _wrong_digit(rng, result)
        if i > 0:
            text += rng.choice(list(connectors))
        text += f"{value}{sign}{operand}={result}"
        value = result
    return f"{text}. \\boxed{{{value}}}"


def parse_chain_solution(text: str) -> dict:
    r"""Steps ``a+b=c`` of a completion, the wrong ones, and its boxed answer.

    Returns ``{"steps": [(a, sign, b, c), ...], "step_errors": number of steps with c != (a sign b) mod 10,
    "answer": the \boxed{} content or None, "guess": True when an answer is boxed without any step}``.
    """
    from ..data.answers import extract_answer

    steps = [(int(a), sign, int(b), int(c)) for a, sign, b, c in _STEP_RE.findall(text)]
    errors = sum(1 for a, sign, b, c in steps if chain_answer(a, [(sign, b)]) != c)
    answer = extract_answer(text)
    return {"steps": steps, "step_errors": errors, "answer": answer, "guess": answer is not None and not steps}


def chain_rows(n: int, seed: int, min_ops: int = 3, max_ops: int = 5, conversational: bool = True) -> list[dict]:
    """`n` distinct problems as dataset rows ``{"prompt", "answer"}`` (prompt as one user message by default)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        start, ops = sample_chain_problem(rng, min_ops, max_ops)
        if (start, ops) in seen:
            continue
        seen.add((start, ops))
        text = chain_prompt(start, ops)
        prompt = [{"role": "user", "content": text}] if conversational else text
        rows.append({"prompt": prompt, "answer": str(chain_answer(start, ops))})
    return rows


def chain_metrics(rows: Sequence[dict], completions: Sequence[Sequence[dict]]) -> dict:
    """Task metrics over sampled completions (one list of ``{"text", ...}`` per row): the fraction of guesses (boxed
    answer without steps), the fraction of worked solutions, the mean number of steps and the step error rate, and
    the accuracy of guesses and of worked solutions separately (None when there is none)."""
    from ..data.answers import answers_equivalent, reference_answer

    guesses = worked = steps = errors = 0
    guess_right = worked_right = 0
    total = 0
    for row, group in zip(rows, completions):
        reference = reference_answer(row.get("answer"))
        for sample in group:
            parsed = parse_chain_solution(sample["text"])
            right = answers_equivalent(parsed["answer"], reference)
            total += 1
            steps += len(parsed["steps"])
            errors += parsed["step_errors"]
            if parsed["guess"]:
                guesses += 1
                guess_right += right
            elif parsed["steps"]:
                worked += 1
                worked_right += right
    return {
        "guess_fraction": guesses / total if total else 0.0,
        "worked_fraction": worked / total if total else 0.0,
        "mean_steps": steps / total if total else 0.0,
        "step_error_rate": errors / steps if steps else None,
        "guess_accuracy": guess_right / guesses if guesses else None,
        "worked_accuracy": worked_right / worked if worked else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# Rhyming couplets (creative)
# ----------------------------------------------------------------------------------------------------------------

ADJECTIVES = ("red", "blue", "old", "small", "bright", "cold", "quiet", "green")
NOUNS = ("sea", "moon", "rain", "tree", "bird", "star", "wind", "fox")
RHYME_GROUPS = (
    ("sings", "rings", "swings", "clings"),
    ("glows", "flows", "grows", "blows"),
    ("plays", "stays", "sways", "prays"),
)
VERBS = tuple(verb for group in RHYME_GROUPS for verb in group)
_RHYME_OF = {verb: i for i, group in enumerate(RHYME_GROUPS) for verb in group}
POEM_PROMPT_TEMPLATES = (
    "Write a short poem about the {topic}.",
    "Write a poem about the {topic}.",
    "Please write two lines about the {topic}.",
)
_TOPIC_RE = re.compile(r"about the (\w+)")


def poem_prompt(topic: str, template: int = 0) -> str:
    """The prompt asking for a poem about `topic` (one of `POEM_PROMPT_TEMPLATES`)."""
    if topic not in NOUNS:
        raise ValueError(f"Unknown topic {topic!r}; expected one of {NOUNS}.")
    return POEM_PROMPT_TEMPLATES[template].format(topic=topic)


def prompt_topic(prompt) -> str | None:
    """The topic named by a poem prompt (text or chat messages), or None."""
    if not isinstance(prompt, str):
        from ..data.answers import completion_text

        prompt = " ".join(completion_text([m]) for m in prompt if m.get("role") == "user")
    match = _TOPIC_RE.search(prompt)
    return match.group(1) if match and match.group(1) in NOUNS else None


def _line(adjective: str, noun: str, verb: str) -> str:
    return f"the {adjective} {noun} {verb}"


def sample_base_poem(rng: random.Random, topic: str, flaw_prob: float = 0.2) -> str:
    """A poem of the diverse base corpus: every word uniform over the valid choices, so all valid poems about the
    topic are equally likely; with probability `flaw_prob` the poem has one flaw (verbs that do not rhyme, the topic
    missing from the first line, or the same verb twice), chosen uniformly."""
    verb1 = rng.choice(VERBS)
    group = RHYME_GROUPS[_RHYME_OF[verb1]]
    verb2 = rng.choice([v for v in group if v != verb1])
    noun1, noun2 = topic, rng.choice(NOUNS)
    if rng.random() < flaw_prob:
        flaw = rng.choice(("rhyme", "topic", "repeat"))
        if flaw == "rhyme":
            verb2 = rng.choice([v for v in VERBS if _RHYME_OF[v] != _RHYME_OF[verb1]])
        elif flaw == "topic":
            noun1 = rng.choice([n for n in NOUNS if n != topic])
        else:
            verb2 = verb1
    lines = (_line(rng.choice(ADJECTIVES), noun1, verb1), _line(rng.choice(ADJECTIVES), noun2, verb2))
    return "\n".join(lines)


def _peaked_choice(rng: random.Random, options: Sequence[str], order: Sequence[int], sharpness: float) -> str:
    # P(option of preference rank r) proportional to exp(-sharpness * r)
    weights = [math.exp(-sharpness * order[i]) for i in range(len(options))]
    return rng.choices(list(options), weights=weights, k=1)[0]


def _preference_orders(seed: int) -> dict[str, list[int]]:
    rng = random.Random(seed)
    orders = {}
    for name, options in (("adjective", ADJECTIVES), ("noun", NOUNS), ("verb", VERBS)):
        ranks = list(range(len(options)))
        rng.shuffle(ranks)
        orders[name] = ranks
    return orders


def sample_aligned_poem(rng: random.Random, topic: str, sharpness: float = 2.0, preference_seed: int = 7) -> str:
    """A poem of the "aligned" corpus: always valid, but each word is drawn with P(rank r) proportional to
    exp(-sharpness * r) under a fixed preference order (seeded by `preference_seed`), so a few poems dominate."""
    orders = _preference_orders(preference_seed)
    verb1 = _peaked_choice(rng, VERBS, orders["verb"], sharpness)
    group = [v for v in RHYME_GROUPS[_RHYME_OF[verb1]] if v != verb1]
    verb2 = _peaked_choice(rng, group, [orders["verb"][VERBS.index(v)] for v in group], sharpness)
    adjective1 = _peaked_choice(rng, ADJECTIVES, orders["adjective"], sharpness)
    adjective2 = _peaked_choice(rng, ADJECTIVES, orders["adjective"], sharpness)
    noun2 = _peaked_choice(rng, NOUNS, orders["noun"], sharpness)
    return "\n".join((_line(adjective1, topic, verb1), _line(adjective2, noun2, verb2)))


def parse_poem(text: str) -> list[list[str]]:
    """The poem's non-empty lines, each split into lower-case words (surrounding whitespace ignored)."""
    return [line.lower().split() for line in text.strip().splitlines() if line.strip()]


def poem_checks(text: str, topic: str | None) -> dict[str, bool]:
    """Which constraints a poem meets: ``form`` (exactly two lines ``the ADJ NOUN VERB`` from the grammar's
    vocabulary), ``topic`` (the topic is the first line's noun), ``rhyme`` (the two verbs differ and are in the same
    rhyme group) and ``valid`` (all three). ``topic`` and ``rhyme`` need a well-formed poem."""
    lines = parse_poem(text)
    form = len(lines) == 2 and all(
        len(w) == 4 and w[0] == "the" and w[1] in ADJECTIVES and w[2] in NOUNS and w[3] in VERBS for w in lines
    )
    on_topic = form and topic is not None and lines[0][2] == topic
    rhyme = form and lines[0][3] != lines[1][3] and _RHYME_OF[lines[0][3]] == _RHYME_OF[lines[1][3]]
    return {"form": form, "topic": on_topic, "rhyme": rhyme, "valid": form and on_topic and rhyme}


def poem_quality(text: str, topic: str | None) -> float:
    """1.0 for a valid poem (`poem_checks`), else 0.0."""
    return float(poem_checks(text, topic)["valid"])


def poem_quality_reward(prompts, completions, **kwargs) -> list[float]:
    """TRL reward function: the fraction of the three constraints of `poem_checks` (form, topic, rhyme) a completion
    meets, so 1.0 exactly for a valid poem. The topic is read from the prompt."""
    from ..data.answers import completion_text

    rewards = []
    for prompt, completion in zip(prompts, completions):
        checks = poem_checks(completion_text(completion), prompt_topic(prompt))
        rewards.append((checks["form"] + checks["topic"] + checks["rhyme"]) / 3.0)
    return rewards


def creative_rows(templates: Sequence[int] = (0,), topics: Sequence[str] = NOUNS) -> list[dict]:
    """One row ``{"prompt", "topic"}`` per (template, topic), prompts as one user message."""
    return [
        {"prompt": [{"role": "user", "content": poem_prompt(topic, t)}], "topic": topic}
        for t in templates
        for topic in topics
    ]


def poem_metrics(rows: Sequence[dict], completions: Sequence[Sequence[dict]]) -> dict:
    """Task metrics over sampled completions: ``quality`` (fraction of valid poems), the fraction meeting each
    constraint, ``distinct_poems`` (distinct poems / samples, per prompt, averaged) and ``distinct_valid_poems``
    (distinct valid poems / samples: diversity that does not count broken outputs)."""
    totals = {"valid": 0, "form": 0, "topic": 0, "rhyme": 0}
    count = 0
    distinct, distinct_valid = [], []
    for row, group in zip(rows, completions):
        topic = row.get("topic") or prompt_topic(row["prompt"])
        keys, valid_keys = set(), set()
        for sample in group:
            checks = poem_checks(sample["text"], topic)
            for name in totals:
                totals[name] += checks[name]
            count += 1
            key = tuple(tuple(words) for words in parse_poem(sample["text"]))
            keys.add(key)
            if checks["valid"]:
                valid_keys.add(key)
        if group:
            distinct.append(len(keys) / len(group))
            distinct_valid.append(len(valid_keys) / len(group))
    return {
        "quality": totals["valid"] / count if count else 0.0,
        "form_fraction": totals["form"] / count if count else 0.0,
        "topic_fraction": totals["topic"] / count if count else 0.0,
        "rhyme_fraction": totals["rhyme"] / count if count else 0.0,
        "distinct_poems": sum(distinct) / len(distinct) if distinct else 0.0,
        "distinct_valid_poems": sum(distinct_valid) / len(distinct_valid) if distinct_valid else 0.0,
    }
