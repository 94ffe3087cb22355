r"""Answer parsing and tokenising shared by the rewards (`trl_powerflow.baselines`) and the evaluation
(`trl_powerflow.evaluation`): the last ``\boxed{}`` of a completion, answer equivalence (math-verify), reference
answers, clustering answers by equivalence and the majority answer, and prompt token ids as TRL's GRPO builds them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

__all__ = [
    "answers_equivalent",
    "cluster_answers",
    "cluster_counts",
    "completion_text",
    "extract_answer",
    "extract_boxed",
    "majority_answer",
    "prompt_token_ids",
    "reference_answer",
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
# Clustering answers by equivalence
# ----------------------------------------------------------------------------------------------------------------


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


def cluster_counts(ids: Sequence[int | None]) -> list[int]:
    """Size of each cluster of `cluster_answers` ids (index = cluster id); None ids are not counted."""
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
    counts = cluster_counts(ids)
    if not counts:
        return None
    best = max(range(len(counts)), key=lambda c: (counts[c], -c))  # largest, then earliest first appearance
    return answers[ids.index(best)]


# ----------------------------------------------------------------------------------------------------------------
# Prompt tokens
# ----------------------------------------------------------------------------------------------------------------


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
