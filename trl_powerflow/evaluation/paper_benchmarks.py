r"""The six benchmarks of the PowerFlow paper's evaluation table, avg@k / pass@k over them, and the table itself.

Benchmarks (`BENCHMARKS`, a registry: name -> hub id, default split / config, columns, answer normaliser):
MATH500, AIME24, AIME25, AMC23, OlympiadBench (English, text-only, open-ended maths) and GPQA-diamond (multiple
choice). `load_benchmark(name, source)` reads one from its hub id (the default, or another known mirror) or from a
local copy with the same schema (a `datasets` directory, or a JSON / JSONL / CSV / Parquet file) and returns rows
``{"prompt", "answer", "benchmark", "index"}``: the problem followed by the paper's instruction `PAPER_PROMPT`
(reason step by step, final answer in ``\boxed{}``; for GPQA the four options A-D, shuffled with a seed, and
`GPQA_PROMPT`, the letter in ``\boxed{}``) and the normalised reference answer (the option letter for GPQA).

`evaluate_benchmarks` samples k completions per problem (HF ``generate``, or vLLM through
`vllm_sampling.vllm_sampler`) and
scores them with `trl_powerflow.evaluation.evaluate_model`: math-verify equivalence of the last ``\boxed{}`` for
the maths benchmarks, exact letter match for GPQA. It reports avg@k (the paper's metric, k = 16) and the unbiased
pass@k per benchmark and their means over the benchmarks; `paper_table.py` lays several methods' results out as the
paper's table.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.answers import extract_answer, extract_boxed

__all__ = [
    "BENCHMARKS",
    "GPQA_PROMPT",
    "PAPER_BENCHMARKS",
    "PAPER_NUM_SAMPLES",
    "PAPER_PROMPT",
    "Benchmark",
    "HubSource",
    "average_over_benchmarks",
    "choice_letter",
    "evaluate_benchmarks",
    "extract_choice",
    "get_benchmark",
    "gpqa_options",
    "load_benchmark",
    "normalise_math_answer",
    "parse_named_spec",
]

PAPER_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
GPQA_PROMPT = "Please reason step by step, and put the letter of the correct option (A, B, C or D) within \\boxed{}."
PAPER_NUM_SAMPLES = 16
CHOICE_LETTERS = "ABCD"


# ----------------------------------------------------------------------------------------------------------------
# Answer normalisation and multiple-choice letters
# ----------------------------------------------------------------------------------------------------------------

_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def normalise_math_answer(value: Any) -> str:
    r"""A reference answer as a bare string for math-verify.

    Numbers: integral floats lose their ".0" (AMC23 stores 27.0), digit strings their leading zeros ("033" -> "33").
    Strings: the content of a ``\boxed{}`` if any, without surrounding ``$...$`` / ``\(...\)`` / ``\[...\]``.
    Lists (OlympiadBench's ``final_answer``): the normalised items joined by ", ".
    """
    if value is None:
        raise ValueError("missing reference answer")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty list of reference answers")
        return ", ".join(normalise_math_answer(item) for item in value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).strip()
    boxed = extract_boxed(text)
    if boxed:
        text = boxed
    stripped = True
    while stripped:
        stripped = False
        for left, right in _DELIMITERS:
            if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text, stripped = text[len(left) : -len(right)].strip(), True
                break
    if re.fullmatch(r"\d+", text):
        return str(int(text))
    if re.fullmatch(r"-?\d+\.0+", text):
        return str(int(float(text)))
    if not text:
        raise ValueError("blank reference answer")
    return text


_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{([^{}]*)\}")
_LETTER = re.compile(r"\(?\s*([A-Da-d])\s*(?:[.:)]\s*.*)?", re.DOTALL)


def choice_letter(answer: str | None) -> str | None:
    r"""The option letter A-D of an extracted answer ("B", "(B)", "\text{B}", "B) 5 m/s", "b."), else None."""
    if answer is None:
        return None
    text = _TEXT_WRAPPER.sub(r"\1", answer).strip().strip("$").strip()
    match = _LETTER.fullmatch(text)
    return match.group(1).upper() if match else None


def extract_choice(completion) -> str | None:
    r"""The option letter in the last ``\boxed{}`` of a completion, None when there is none."""
    return choice_letter(extract_answer(completion))


def letters_match(answer: str | None, reference: str | None) -> bool:
    """Exact option-letter match (None matches nothing)."""
    return answer is not None and reference is not None and answer.strip().upper() == reference.strip().upper()


def gpqa_options(row: Mapping, index: int, seed: int = 0) -> tuple[list[str], str]:
    """GPQA's four options in a seeded random order and the letter of the correct one.

    The order depends only on (`seed`, `index`): the same row gets the same options on every run and backend.
    """
    texts = [str(row["Correct Answer"]).strip()] + [str(row[f"Incorrect Answer {i}"]).strip() for i in (1, 2, 3)]
    order = list(range(4))
    random.Random(f"gpqa-{seed}-{index}").shuffle(order)
    return [texts[i] for i in order], CHOICE_LETTERS[order.index(0)]


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    """A hub dataset holding a benchmark: its id, the split to evaluate and its configs (concatenated)."""

    hub_id: str
    split: str
    configs: tuple[str | None, ...] = (None,)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its hub sources (the first is the default), the columns holding the problem and the reference
    answer (the first one present is used, so that known mirrors load too), the answer normaliser and the kind
    ("math": math-verify on the boxed answer; "choice": GPQA-style options A-D and letter match)."""

    name: str
    sources: tuple[HubSource, ...]
    prompt_columns: tuple[str, ...]
    answer_columns: tuple[str, ...]
    normalise_answer: Callable[[Any], str] = normalise_math_answer
    kind: str = "math"
    aliases: tuple[str, ...] = ()

    @property
    def hub_id(self) -> str:
        return self.sources[0].hub_id

    @property
    def split(self) -> str:
        return self.sources[0].split

    @property
    def instruction(self) -> str:
        return GPQA_PROMPT if self.kind == "choice" else PAPER_PROMPT


# Schemas as published on the hub (column: type) and where each was looked up:
# - MATH500: HuggingFaceH4/MATH-500, split "test": problem: str, solution: str, answer: str, subject: str,
#   level: int64, unique_id: str. Source: the `dataset_info` block of the card of its hub copies (lmms-lab/MATH500,
#   macabdul9/MATH-500: the same 500-row test split) and evaluation code reading H4's row["problem"] / ["answer"].
# - AIME24: HuggingFaceH4/aime_2024, split "train": id: int64, problem: str, solution: str, answer: str, url: str,
#   year: str. Source: its dataset card's `dataset_info`. Mirror Maxwell-Jia/AIME_2024, split "train": ID: str,
#   Problem: str, Solution: str, Answer: int. Source: its card's "Data Fields" and open-r1's decontamination
#   script (column "Problem").
# - AIME25: yentinglin/aime_2025, split "train": problem: str, answer: str (other columns unused). Source: open-r1's
#   decontamination script (column "problem", split "train") and evaluation code reading str(row["answer"]).
#   Mirror opencompass/AIME2025, configs "AIME2025-I" and "AIME2025-II" (15 problems each), split "test":
#   question: str, answer: str. Source: NVIDIA NeMo-RL's aime2025 dataset and evalscope's aime25 docs.
# - AMC23: math-ai/amc23, split "test": id: int64, question: str, answer: float64, url: str (40 problems).
#   Source: evaluation code reading item["question"] / item["answer"] / item["url"] and the dataset_info of its
#   copies (FlippyDora/amc23: answer float64). Mirror knoveleng/AMC-23, split "train": problem: str, answer.
#   Source: lighteval / evalscope task configs (prompt "problem", answer "answer", split "train").
# - OlympiadBench: Hothan/OlympiadBench, config "OE_TO_maths_en_COMP" (open-ended, text-only, maths, English,
#   competition), split "train": id: int, question: str, solution: list[str], final_answer: list[str], context,
#   image_1..image_5 (null in this config), is_multiple_answer: bool, unit, answer_type, subfield, ... Source:
#   evaluation code loading that config (row["question"]; row["final_answer"] a list of LaTeX strings such as
#   "$\frac{1}{2}$"; image_1 None for text-only rows; id / solution / subfield read by other loaders).
# - GPQA-diamond: Idavidrein/gpqa, config "gpqa_diamond", split "train" (198 questions; gated on the hub):
#   Question: str, "Correct Answer": str, "Incorrect Answer 1".."Incorrect Answer 3": str (+ explanation and
#   annotator metadata). Source: open-r1's decontamination script (column "Question", subset gpqa_diamond, split
#   "train") and loaders building the options from these four columns.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "MATH500",
            (HubSource("HuggingFaceH4/MATH-500", "test"),),
            ("problem",),
            ("answer",),
            aliases=("math-500", "math"),
        ),
        Benchmark(
            "AIME24",
            (HubSource("HuggingFaceH4/aime_2024", "train"), HubSource("Maxwell-Jia/AIME_2024", "train")),
            ("problem", "Problem"),
            ("answer", "Answer"),
            aliases=("aime2024", "aime_2024"),
        ),
        Benchmark(
            "AIME25",
            (
                HubSource("yentinglin/aime_2025", "train"),
                HubSource("opencompass/AIME2025", "test", ("AIME2025-I", "AIME2025-II")),
            ),
            ("problem", "question"),
            ("answer",),
            aliases=("aime2025", "aime_2025"),
        ),
        Benchmark(
            "AMC23",
            (HubSource("math-ai/amc23", "test"), HubSource("knoveleng/AMC-23", "train")),
            ("question", "problem"),
            ("answer",),
            aliases=("amc2023", "amc-23"),
        ),
        Benchmark(
            "OlympiadBench",
            (HubSource("Hothan/OlympiadBench", "train", ("OE_TO_maths_en_COMP",)),),
            ("question",),
            ("final_answer",),
            aliases=("olympiad", "olympiad_bench"),
        ),
        Benchmark(
            "GPQA-diamond",
            (HubSource("Idavidrein/gpqa", "train", ("gpqa_diamond",)),),
            ("Question",),
            ("Correct Answer",),
            normalise_answer=str,
            kind="choice",
            aliases=("gpqa", "gpqa_diamond"),
        ),
    )
}
PAPER_BENCHMARKS = tuple(BENCHMARKS)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called `name` (case, "-", "_" and spaces ignored; aliases such as "gpqa" accepted)."""
    wanted = _key(name)
    for benchmark in BENCHMARKS.values():
        if wanted in {_key(benchmark.name), *(_key(alias) for alias in benchmark.aliases)}:
            return benchmark
    raise ValueError(f"Unknown benchmark {name!r}; the paper's benchmarks are {', '.join(BENCHMARKS)} (or 'all').")


def parse_named_spec(spec: str) -> tuple[str | None, str]:
    """``"NAME=VALUE"`` -> (NAME, VALUE); a bare value (or an existing path containing "=") -> (None, value)."""
    name, sep, value = spec.partition("=")
    if sep and name.strip() and value.strip() and not os.path.exists(spec):
        return name.strip(), value.strip()
    return None, spec


def parse_benchmark_specs(specs: Sequence[str]) -> list[tuple[str, str | None]]:
    """``--benchmark NAME[=PATH_OR_HUB_ID]`` values -> [(canonical name, source or None)]; "all" is the six."""
    parsed: dict[str, str | None] = {}
    for spec in specs:
        name, source = parse_named_spec(spec)
        if name is None:
            name, source = source, None
        names = PAPER_BENCHMARKS if _key(name) == "all" and source is None else (get_benchmark(name).name,)
        for canonical in names:
            if canonical in parsed and parsed[canonical] != source:
                raise ValueError(f"Benchmark {canonical} is given twice ({parsed[canonical]!r} and {source!r}).")
            parsed[canonical] = source
    return list(parsed.items())


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def _load_raw(benchmark: Benchmark, source: str | None, split: str | None, config: str | None):
    from datasets import concatenate_datasets

    from ..data.prompts import load_split

    source = source or benchmark.hub_id
    if os.path.exists(os.path.expanduser(source)):
        return load_split(os.path.expanduser(source), None, split or benchmark.split)
    known = next((s for s in benchmark.sources if s.hub_id == source), None)
    hub = known or HubSource(source, benchmark.split, benchmark.sources[0].configs)  # an unknown mirror: defaults
    parts = [load_split(source, cfg, split or hub.split) for cfg in ((config,) if config else hub.configs)]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _column(candidates: Sequence[str], columns: Sequence[str], benchmark: Benchmark, source: str, what: str) -> str:
    for column in candidates:
        if column in columns:
            return column
    raise ValueError(
        f"{benchmark.name} data {source!r} has no {what} column {' / '.join(map(repr, candidates))}; its columns are "
        f"{list(columns)}. Pass a copy of {benchmark.hub_id} with the same schema."
    )


def load_benchmark(
    name: str,
    source: str | None = None,
    *,
    split: str | None = None,
    config: str | None = None,
    max_prompts: int | None = None,
    seed: int = 0,
    chat: bool = True,
) -> list[dict]:
    """Rows ``{"prompt", "answer", "benchmark", "index"}`` of benchmark `name` (see the module docstring).

    `source`: None (the registered hub id), another hub id (known mirrors use their own split/config; others the
    benchmark's defaults), or a local path (a `datasets` directory, or a JSON / JSONL / CSV / Parquet file with the
    hub schema). `split` / `config` override the defaults. `max_prompts`: the first n problems. `seed`: GPQA's
    option order. `chat`: the prompt as one user message (for models with a chat template), else plain text.
    """
    benchmark = get_benchmark(name)
    label = source or benchmark.hub_id
    raw = _load_raw(benchmark, source, split, config)
    if max_prompts is not None:
        raw = raw.select(range(min(max_prompts, len(raw))))
    if len(raw) == 0:
        raise ValueError(f"{benchmark.name} data {label!r} holds no problem.")
    columns = raw.column_names
    prompt_column = _column(benchmark.prompt_columns, columns, benchmark, label, "problem")
    answer_column = _column(benchmark.answer_columns, columns, benchmark, label, "answer")
    if benchmark.kind == "choice":
        for i in (1, 2, 3):
            _column((f"Incorrect Answer {i}",), columns, benchmark, label, "option")
    rows = []
    for index, row in enumerate(raw):
        problem = str(row[prompt_column] or "").strip()
        if not problem:
            raise ValueError(f"{benchmark.name} data {label!r}: row {index} has a blank {prompt_column!r}.")
        if benchmark.kind == "choice":
            options, answer = gpqa_options(row, index, seed)
            lines = "\n".join(f"{letter}) {text}" for letter, text in zip(CHOICE_LETTERS, options))
            text = f"{problem}\n\n{lines}\n{benchmark.instruction}"
        else:
            try:
                answer = benchmark.normalise_answer(row[answer_column])
            except ValueError as error:
                raise ValueError(f"{benchmark.name} data {label!r}: row {index}: {error}.") from None
            text = f"{problem}\n{benchmark.instruction}"
        prompt = [{"role": "user", "content": text}] if chat else text
        rows.append({"prompt": prompt, "answer": answer, "benchmark": benchmark.name, "index": index})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Evaluation and averages
# ----------------------------------------------------------------------------------------------------------------


def average_over_benchmarks(results: Mapping[str, dict], num_samples: int) -> dict:
    """Means over benchmarks (each counts once, whatever its size) of avg@k, pass@1, pass@k and maj@k."""
    average: dict[str, Any] = {"benchmarks": list(results)}
    for key in (f"avg@{num_samples}", "pass@1", f"pass@{num_samples}", f"maj@{num_samples}"):
        values = [result["metrics"].get(key) for result in results.values()]
        average[key] = sum(values) / len(values) if values and None not in values else None
    return average


def evaluate_benchmarks(
    model,
    tokenizer,
    benchmarks: Mapping[str, Sequence[dict]],
    *,
    name: str | None = None,
    num_samples: int = PAPER_NUM_SAMPLES,
    generate_fn: Callable[[list], list[list[dict]]] | None = None,
    **evaluate_kwargs,
) -> dict:
    """Evaluate one model on several benchmarks ({name: rows of `load_benchmark`}) with the same settings.

    Each benchmark goes through `trl_powerflow.evaluation.evaluate_model` (`evaluate_kwargs`: max_new_tokens,
    temperature, top_p, seed, batch_size, embedder, ...; `generate_fn`: e.g. `vllm_sampler(...)` instead of HF
    generate); GPQA-style benchmarks are scored by option letter. Returns ``{"name", "num_samples", "benchmarks":
    {benchmark: evaluate_model result}, "average": average_over_benchmarks(...)}``.
    """
    from .generation import evaluate_model

    results = {}
    for benchmark_name, rows in benchmarks.items():
        kind = get_benchmark(benchmark_name).kind
        scoring = {"answer_extractor": extract_choice, "answer_match": letters_match} if kind == "choice" else {}
        results[benchmark_name] = evaluate_model(
            model,
            tokenizer,
            rows,
            num_samples=num_samples,
            name=f"{name} / {benchmark_name}",
            generate_fn=generate_fn,
            **scoring,
            **evaluate_kwargs,
        )
    return {
        "name": name,
        "num_samples": num_samples,
        "benchmarks": results,
        "average": average_over_benchmarks(results, num_samples),
    }
