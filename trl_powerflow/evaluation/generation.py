r"""Generation-based evaluation of a checkpoint: sample k completions per prompt, score accuracy and diversity.

`evaluate_model(model, tokenizer, dataset, ...)` is the in-process entry point (used by ``scripts/evaluate.py`` and
usable by comparison scripts); `load_model_and_tokenizer` loads a model directory, a hub id or a PEFT adapter
directory; `format_markdown_table` renders one or several results as a Markdown table.

Metrics (k = `num_samples` completions per prompt; diversity metrics are computed within each prompt's k completions
and averaged over prompts):

- ``avg@k`` mean fraction of correct completions, ``pass@1`` (= avg@k) and ``pass@k`` (unbiased estimator),
  ``maj@k`` accuracy of the majority answer (TTRL-style vote); only with a reference-answer column, else None.
- ``answer_fraction`` fraction of completions with a (non-empty) ``\boxed{}`` answer.
- ``mean_completion_tokens`` generated tokens up to and including the first EOS; ``truncated_fraction`` fraction
  without EOS within ``max_new_tokens``.
- ``forward_passes_per_answer`` sampled tokens (= incremental forward passes of the decoder) per answer: the
  completion length for one-pass sampling, all proposal tokens for power sampling.
- ``distinct_1`` / ``distinct_2`` (whitespace n-grams), ``distinct_answer_fraction``, ``semantic_diversity`` (mean
  pairwise cosine distance of all-MiniLM-L6-v2 embeddings; None when the embedder is unavailable or disabled).

Sampling uses only the given settings (temperature, top_p, top_k, max_new_tokens): the checkpoint's own
``generation_config`` sampling defaults are ignored, so different checkpoints are sampled alike.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

import torch

from ..data.answers import answers_equivalent, extract_answer, majority_answer, prompt_token_ids, reference_answer
from .decoding import decode_completion, eos_token_ids, model_device
from .markdown import fmt_metric, md_table
from .metrics import (
    avg_at_k,
    distinct_answer_fraction,
    distinct_n,
    embed_texts,
    load_default_embedder,
    mean_pairwise_cosine_distance,
    mean_pass_at_k,
)
from .power_sampling import power_sampling_completions

logger = logging.getLogger(__name__)

__all__ = [
    "evaluate_model",
    "evaluate_one_pass",
    "evaluate_power_sampling",
    "format_markdown_table",
    "generate_completions",
    "load_model_and_tokenizer",
]

_TABLE_COLUMNS = (
    ("avg@k", "avg@k"),
    ("pass@1", "pass@1"),
    ("pass@k", "pass@k"),
    ("maj@k", "maj@k"),
    ("answer_fraction", "answered"),
    ("mean_completion_tokens", "tokens"),
    ("truncated_fraction", "truncated"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("distinct_answer_fraction", "distinct answers"),
    ("semantic_diversity", "semantic div."),
    ("forward_passes_per_answer", "fwd/answer"),
)


def load_model_and_tokenizer(
    model_name_or_path: str,
    base_model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    merge_adapter: bool = True,
):
    """Load a causal LM + tokenizer from a model directory, a hub id or a PEFT adapter directory.

    An adapter directory (with ``adapter_config.json``) is loaded on top of its base model (`base_model`, or the
    ``base_model_name_or_path`` recorded in the adapter config) and merged when `merge_adapter`. The tokenizer comes
    from the adapter directory when it holds one, else from the base. `dtype`: "auto" (float32 on CPU, the
    checkpoint's dtype on an accelerator), or a torch dtype name such as "bfloat16". `device`: default CUDA if
    available, else CPU. The tokenizer is set to left padding (with pad = eos if it has no pad token).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        torch_dtype = torch.float32 if str(device).startswith("cpu") else "auto"
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"Unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'.")

    adapter_config_path = os.path.join(model_name_or_path, "adapter_config.json")
    if os.path.isfile(adapter_config_path):
        from peft import PeftModel

        with open(adapter_config_path) as f:
            adapter_config = json.load(f)
        base = base_model or adapter_config.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_config_path} records no base model; pass `base_model`.")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
        model = PeftModel.from_pretrained(model, model_name_or_path)
        if merge_adapter:
            model = model.merge_and_unload()
        has_tokenizer = any(
            os.path.isfile(os.path.join(model_name_or_path, name))
            for name in ("tokenizer.json", "tokenizer_config.json")
        )
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path if has_tokenizer else base)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    model.to(device)
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def generate_completions(
    model,
    tokenizer,
    prompts: Sequence,
    num_samples: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 8,
    seed: int | None = 0,
    chat_template_kwargs: dict | None = None,
) -> list[list[dict]]:
    """Sample `num_samples` completions for each prompt (chat template for conversational prompts).

    Returns one list per prompt of ``{"text", "num_tokens", "truncated"}``: text decoded up to the first EOS
    (special tokens skipped), number of generated tokens up to and including that EOS, and whether no EOS came
    within `max_new_tokens`. `temperature` 0 means greedy decoding (the single greedy completion repeated).
    `batch_size` counts prompts per `generate` call (each yielding `num_samples` sequences).
    """
    from transformers import GenerationConfig

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    greedy = temperature == 0
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    returned = 1 if greedy else num_samples
    generation_config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else top_k,
        max_new_tokens=max_new_tokens,
        num_return_sequences=returned,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
    )
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    device = model_device(model)
    eos_set = set(eos_ids)
    was_training = model.training
    model.eval()
    results: list[list[dict]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch_ids = [
                prompt_token_ids(tokenizer, p, chat_template_kwargs) for p in prompts[start : start + batch_size]
            ]
            width = max(len(ids) for ids in batch_ids)
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch_ids], device=device)
            attention_mask = torch.tensor(
                [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch_ids], device=device
            )
            with torch.no_grad():
                sequences = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
                )
            generated = sequences[:, width:].tolist()
            for i in range(len(batch_ids)):
                rows = generated[i * returned : (i + 1) * returned]
                samples = [decode_completion(tokenizer, row, eos_set) for row in rows]
                results.append([dict(samples[0]) for _ in range(num_samples)] if greedy else samples)
    finally:
        model.train(was_training)
    return results


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if len(values) else 0.0


def evaluate_model(
    model,
    tokenizer,
    dataset,
    *,
    num_samples: int = 4,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = 0,
    batch_size: int = 8,
    prompt_column: str = "prompt",
    answer_column: str | None = "answer",
    max_prompts: int | None = None,
    embedder="auto",
    chat_template_kwargs: dict | None = None,
    num_examples: int = 3,
    return_completions: bool = False,
    name: str | None = None,
    method: str = "sample",
    alpha: float = 4.0,
    mcmc_steps: int = 10,
    block_size: int | None = None,
    generate_fn: Callable[[list], list[list[dict]]] | None = None,
    answer_extractor: Callable[[str], str | None] | None = None,
    answer_match: Callable[[str | None, str | None], bool] | None = None,
) -> dict:
    """Sample `num_samples` completions per prompt of `dataset` and compute the metrics of the module docstring.

    `dataset`: a `datasets.Dataset` or a list of dicts with a `prompt_column` (strings or chat messages) and,
    optionally, `answer_column` (reference answers; accuracy metrics are None without it). `embedder`: "auto" loads
    all-MiniLM-L6-v2 if installed, None disables semantic diversity, or an object with ``.encode`` / a callable.

    `method`: "sample" (one pass per completion with the settings above) or "power_sampling" (Karan & Du's
    Metropolis–Hastings sampler of p^alpha, `trl_powerflow.evaluation.power_sampling`, with `alpha`, `mcmc_steps` and
    `block_size`; temperature / top_p / top_k are then unused: its proposal is the model at temperature 1/alpha).
    ``forward_passes_per_answer`` is the mean number of sampled tokens (= incremental forward passes) per answer.

    `generate_fn(prompts)`, when given, replaces the sampler (`model` is then unused, `method` only recorded): like
    `generate_completions` it returns one list of `num_samples` ``{"text", "num_tokens", "truncated"}`` per prompt
    (e.g. the vLLM sampler of `trl_powerflow.evaluation.vllm_sampling`). `answer_extractor(text)` turns a
    completion into its answer (default `extract_answer`, the last ``\\boxed{}``) and `answer_match(answer,
    reference)` decides whether it is correct (default `answers_equivalent`, math-verify); multiple-choice benchmarks
    pass a letter extractor and exact letter match.

    Returns ``{"name", "metrics", "settings", "samples"}`` (+ ``"completions"`` when `return_completions`): metrics
    keyed as in the module docstring with "@k" spelled out (e.g. ``"avg@4"``, ``"pass@4"``, ``"maj@4"``, plus
    ``"pass@1"``), `samples` the first completion of the first `num_examples` prompts.
    """
    if max_prompts is not None:
        if hasattr(dataset, "select"):
            dataset = dataset.select(range(min(max_prompts, len(dataset))))
        else:
            dataset = list(dataset)[:max_prompts]
    rows = [dict(row) for row in dataset]
    if not rows:
        raise ValueError("The evaluation dataset is empty.")
    if prompt_column not in rows[0]:
        raise ValueError(f"The dataset has no prompt column {prompt_column!r}; its columns are {sorted(rows[0])}.")
    has_answers = answer_column is not None and answer_column in rows[0]
    prompts = [row[prompt_column] for row in rows]
    references = [reference_answer(row[answer_column]) for row in rows] if has_answers else [None] * len(rows)

    if generate_fn is not None:
        groups = generate_fn(prompts)
        if len(groups) != len(prompts) or any(len(group) != num_samples for group in groups):
            raise ValueError(
                f"generate_fn must return {num_samples} completions for each of the {len(prompts)} prompts."
            )
    elif method == "sample":
        groups = generate_completions(
            model,
            tokenizer,
            prompts,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            batch_size=batch_size,
            seed=seed,
            chat_template_kwargs=chat_template_kwargs,
        )
    elif method == "power_sampling":
        groups = power_sampling_completions(
            model,
            tokenizer,
            prompts,
            num_samples=num_samples,
            max_new_tokens=max_new_tokens,
            alpha=alpha,
            mcmc_steps=mcmc_steps,
            block_size=block_size,
            batch_size=batch_size,
            seed=seed,
            chat_template_kwargs=chat_template_kwargs,
        )
    else:
        raise ValueError(f"`method` must be 'sample' or 'power_sampling', got {method!r}.")
    extract = answer_extractor or extract_answer
    match = answer_match or answers_equivalent
    answers = [[extract(sample["text"]) for sample in group] for group in groups]
    k = num_samples

    metrics: dict[str, float | int | None] = {"num_prompts": len(rows), "num_samples": k}
    correct = None
    if has_answers:
        correct = [[match(a, ref) for a in group] for group, ref in zip(answers, references)]
        metrics[f"avg@{k}"] = avg_at_k(correct)
        metrics["pass@1"] = mean_pass_at_k(correct, 1)
        metrics[f"pass@{k}"] = mean_pass_at_k(correct, k)
        metrics[f"maj@{k}"] = _mean(
            [float(match(majority_answer(group), ref)) for group, ref in zip(answers, references)]
        )
    else:
        metrics.update({f"avg@{k}": None, "pass@1": None, f"pass@{k}": None, f"maj@{k}": None})
    samples_flat = [sample for group in groups for sample in group]
    metrics["answer_fraction"] = _mean([float(a is not None) for group in answers for a in group])
    metrics["mean_completion_tokens"] = _mean([s["num_tokens"] for s in samples_flat])
    metrics["truncated_fraction"] = _mean([float(s["truncated"]) for s in samples_flat])
    metrics["forward_passes_per_answer"] = _mean([s.get("forward_passes", s["num_tokens"]) for s in samples_flat])
    texts = [[sample["text"] for sample in group] for group in groups]
    metrics["distinct_1"] = _mean([distinct_n(group, 1) for group in texts])
    metrics["distinct_2"] = _mean([distinct_n(group, 2) for group in texts])
    metrics["distinct_answer_fraction"] = _mean([distinct_answer_fraction(group) for group in answers])
    metrics["semantic_diversity"] = _semantic_diversity(texts, embedder)

    settings = {
        "num_samples": k,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "batch_size": batch_size,
        "max_prompts": max_prompts,
        "prompt_column": prompt_column,
        "answer_column": answer_column if has_answers else None,
        "method": method,
    }
    if method == "power_sampling":
        settings.update({"alpha": alpha, "mcmc_steps": mcmc_steps, "block_size": block_size})
    samples = []
    for i in range(min(num_examples, len(rows))):
        samples.append(
            {
                "prompt": prompts[i],
                "reference": references[i],
                "completion": groups[i][0]["text"],
                "answer": answers[i][0],
                "correct": correct[i][0] if correct is not None else None,
                "num_tokens": groups[i][0]["num_tokens"],
                "truncated": groups[i][0]["truncated"],
            }
        )
    result = {"name": name, "metrics": metrics, "settings": settings, "samples": samples}
    if return_completions:
        result["completions"] = [
            [{**sample, "answer": answer} for sample, answer in zip(group, group_answers)]
            for group, group_answers in zip(groups, answers)
        ]
    return result


def evaluate_power_sampling(
    model, tokenizer, dataset, *, alpha: float = 4.0, mcmc_steps: int = 10, block_size: int | None = None, **kwargs
) -> dict:
    """`evaluate_model` with power sampling as the sampler (``method="power_sampling"``), completions included;
    ``forward_passes_per_answer`` in the metrics and the power-sampling settings in ``settings``. `kwargs` go to
    `evaluate_model` (temperature, top_p and top_k are ignored: the proposal is fixed to temperature 1/alpha)."""
    power = dict(alpha=alpha, mcmc_steps=mcmc_steps, block_size=block_size)
    result = evaluate_model(
        model, tokenizer, dataset, method="power_sampling", return_completions=True, **power, **kwargs
    )
    samples = [s for group in result["completions"] for s in group]
    result["metrics"]["forward_passes_per_answer"] = sum(s["forward_passes"] for s in samples) / len(samples)
    result["settings"].update(
        {"method": "power_sampling", "alpha": alpha, "mcmc_steps": mcmc_steps, "block_size": block_size}
    )
    return result


def evaluate_one_pass(model, tokenizer, dataset, **kwargs) -> dict:
    """`evaluate_model` (one-pass sampling), with ``forward_passes_per_answer`` = mean completion tokens."""
    result = evaluate_model(model, tokenizer, dataset, **kwargs)
    result["metrics"]["forward_passes_per_answer"] = result["metrics"]["mean_completion_tokens"]
    result["settings"]["method"] = "sample"
    return result


def _semantic_diversity(texts: list[list[str]], embedder) -> float | None:
    if embedder is None:
        return None
    if isinstance(embedder, str):
        if embedder != "auto":
            raise ValueError(f"embedder must be 'auto', None or an embedding model, got {embedder!r}.")
        embedder = load_default_embedder()
        if embedder is None:
            return None
    flat = [text for group in texts for text in group]
    embeddings = embed_texts(flat, embedder)
    values, start = [], 0
    for group in texts:
        values.append(mean_pairwise_cosine_distance(embeddings[start : start + len(group)]))
        start += len(group)
    return _mean(values)


def format_markdown_table(results: dict | Sequence[dict]) -> str:
    """Markdown table with one row per `evaluate_model` result (column "@k" taken from each result's k)."""
    if isinstance(results, dict):
        results = [results]
    rows = []
    for result in results:
        metrics = result["metrics"]
        k = metrics.get("num_samples")
        cells = [fmt_metric(metrics.get(key.replace("@k", f"@{k}"))) for key, _ in _TABLE_COLUMNS]
        rows.append([str(result.get("name") or "model"), *cells])
    lines = md_table(["method"] + [label for _, label in _TABLE_COLUMNS], rows)
    ks = sorted({r["metrics"].get("num_samples") for r in results}, key=str)
    lines.append("")
    lines.append(f"k = {', '.join(str(k) for k in ks)} samples per prompt.")
    return "\n".join(lines)
