r"""Internal layer policies through the logit lens, and a callback that logs their entropy during training.

The internal policy of layer `l` (BuPO, Tan et al. 2025) reads the hidden state after decoder layer `l` through the
model's own unembedding:

    pi_l(. | y_<t) = softmax( lm_head( norm( h_l(y_<t) ) ) )

**The final norm is applied** (`model.model.norm` for Qwen2 / Llama): the standard logit lens for pre-norm decoders,
where every layer writes into a residual stream that only the final norm maps into the unembedding's input space.
Layer indices follow `output_hidden_states=True`: `l = 0` is the token embedding, `l = 1..L` the output of decoder
layer `l` (`model.model.layers[l - 1]`), `L = config.num_hidden_layers`. transformers returns `hidden_states[L]`
*after* the final norm (it is `last_hidden_state`), so the norm is applied to `hidden_states[0..L-1]` only and
`pi_L` is exactly the model's own next-token distribution (checked by the tests); a model whose config sets
`tie_last_hidden_states=False` gets the norm on every layer. Logit soft-capping / scaling of the config
(`final_logit_softcapping`, `logit_scale`) is applied as the model would. Entropies are those of the temperature-1
internal policies (natural log).

`LayerEntropyCallback` measures the mean entropy of every internal policy on completions of a fixed probe set of
prompts and logs it as ``layer_entropy/{l}``. A `TrainerCallback` cannot see the trainer's own completions (GRPO
builds and consumes them inside `_prepare_inputs`), so the callback samples its own: every `every_steps` optimiser
steps it draws `num_samples` completions per probe prompt with the *current* model (seeded, so two measurements use
the same random numbers and differ only through the model), or, with `resample=False`, draws them once at the first
measurement and reuses them (the probe text is then fixed and only the internal policies change). It works with
`GRPOTrainer`, `PowerFlowTrainer` and the BuPO trainers alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

__all__ = [
    "LayerEntropyCallback",
    "LensParts",
    "entropy_history",
    "install_first",
    "layer_entropies",
    "lens_logits",
    "lens_parts",
    "masked_entropy_per_layer",
]

_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f")


@dataclass
class LensParts:
    """What the logit lens needs from a causal LM: final norm, unembedding, number of decoder layers."""

    norm: torch.nn.Module
    lm_head: torch.nn.Module
    num_layers: int
    last_is_normed: bool
    softcap: float | None
    logit_scale: float


def _unwrap(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP / DeepSpeed wrappers
        model = model.module
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):  # PEFT
        model = model.get_base_model()
    return model


def lens_parts(model) -> LensParts:
    """Find the final norm and the unembedding of a causal LM (plain, PEFT- or DDP-wrapped). Raises ValueError for a
    model that exposes neither (the transformers API gives them for Qwen2, Llama and most decoder-only LMs)."""
    model = _unwrap(model)
    lm_head = model.get_output_embeddings()
    backbone = getattr(model, "base_model", None)
    norm = None
    if backbone is not None and backbone is not model:
        candidates = (getattr(backbone, name, None) for name in _NORM_NAMES)
        norm = next((module for module in candidates if isinstance(module, torch.nn.Module)), None)
    if lm_head is None or norm is None:
        raise ValueError(
            f"{type(model).__name__} does not expose a final norm ({'/'.join(_NORM_NAMES)} on its backbone) and an "
            "output embedding: the logit lens is not available for it."
        )
    config = model.config.get_text_config()
    tie_last = getattr(config, "tie_last_hidden_states", None)
    scale = getattr(config, "logit_scale", None)
    return LensParts(
        norm=norm,
        lm_head=lm_head,
        num_layers=int(config.num_hidden_layers),
        last_is_normed=True if tie_last is None else bool(tie_last),
        softcap=getattr(config, "final_logit_softcapping", None),
        logit_scale=1.0 if scale is None else float(scale),
    )


def lens_logits(parts: LensParts, hidden: torch.Tensor, layer: int) -> torch.Tensor:
    """Logits of the internal policy of `layer` from `hidden_states[layer]` (final norm applied, see module doc)."""
    if not 0 <= layer <= parts.num_layers:
        raise ValueError(f"layer must be in [0, {parts.num_layers}], got {layer}.")
    if not (layer == parts.num_layers and parts.last_is_normed):
        hidden = parts.norm(hidden)
    hidden = hidden.to(parts.lm_head.weight.dtype)
    logits = parts.lm_head(hidden)
    if parts.logit_scale != 1.0:
        logits = logits * parts.logit_scale
    if parts.softcap is not None:
        logits = torch.tanh(logits / parts.softcap) * parts.softcap
    return logits


def masked_entropy_per_layer(
    parts: LensParts, hidden_states: Sequence[torch.Tensor], mask: torch.Tensor, layers: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean over the positions where `mask` is 1 of the entropy of each layer's internal policy, shape (len(layers),).

    `hidden_states`: the `output_hidden_states` tuple, already cut to the scored positions (`mask` has their shape).
    """
    layers = range(len(hidden_states)) if layers is None else layers
    mask = mask.to(torch.float32)
    denominator = mask.sum().clamp(min=1.0)
    values = []
    for layer in layers:
        logps = torch.log_softmax(lens_logits(parts, hidden_states[layer], layer).float(), dim=-1)
        entropy = -(logps.exp() * logps).sum(-1)
        values.append((entropy * mask).sum() / denominator)
    return torch.stack(values)


@torch.no_grad()
def layer_entropies(model, input_ids, attention_mask, completion_mask, layers: Sequence[int] | None = None):
    """Mean entropy of every internal policy (layers 0..L) on the completion tokens of left-padded
    ``input_ids = [prompt | completion]``; `completion_mask` (B, C) marks the completion tokens to score (the policy
    that *predicts* each of them is read at the previous position). Returns a float tensor of shape (L + 1,)."""
    parts = lens_parts(model)
    width = completion_mask.size(1)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    hidden = [h[:, -width - 1 : -1] for h in outputs.hidden_states]
    if len(hidden) != parts.num_layers + 1:
        raise ValueError(f"Expected {parts.num_layers + 1} hidden states, got {len(hidden)}.")
    return masked_entropy_per_layer(parts, hidden, completion_mask, layers).cpu()


class LayerEntropyCallback(TrainerCallback):
    r"""Log the entropy of each internal layer policy (logit lens, final norm applied) during training.

    Every `every_steps` optimiser steps (and once before the first step) it samples `num_samples` completions of each
    probe prompt with the current model, runs one forward with `output_hidden_states=True` and logs
    ``layer_entropy/{l}`` for l = 0 (embeddings) .. L (final layer = the model's own next-token entropy): the mean
    entropy, in nats, of the temperature-1 internal policy over the completion tokens (EOS included, padding out).

    Where the values go: the step-0 measurement is its own `state.log_history` entry; the later ones are added to the
    trainer's log of the same step (the callback asks the trainer to log at every measured step), so they appear in
    `state.log_history` / `trainer_state.json` beside `loss`, and in the `logs` seen by callbacks after this one. To
    let reporting integrations (wandb, tensorboard, ...) receive them too, put the callback first:
    `install_first(trainer, callback)`. `history` keeps every measurement.

    Args:
        tokenizer: tokenizer of the model (chat template applied to conversational probe prompts).
        probe_prompts: plain-text prompts or lists of chat messages.
        every_steps: measure every this many optimiser steps (>= 1).
        num_samples: completions per probe prompt.
        max_new_tokens: completion length limit of the probe completions.
        temperature: sampling temperature of the probe completions (the entropies are always at temperature 1).
        seed: sampling seed (the trainer's RNG state is left untouched).
        resample: True samples fresh completions at every measurement, False samples once and reuses them.
        batch_size: prompts per forward.
    """

    def __init__(
        self,
        tokenizer,
        probe_prompts: Sequence,
        every_steps: int = 10,
        num_samples: int = 2,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        seed: int = 0,
        resample: bool = True,
        batch_size: int = 8,
        chat_template_kwargs: dict | None = None,
    ):
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"`every_steps` must be an integer >= 1, got {every_steps!r}.")
        if num_samples < 1 or max_new_tokens < 1 or batch_size < 1:
            raise ValueError("`num_samples`, `max_new_tokens` and `batch_size` must be >= 1.")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}.")
        if not probe_prompts:
            raise ValueError("`probe_prompts` is empty.")
        from ..data.answers import prompt_token_ids

        self.tokenizer = tokenizer
        self.prompt_ids = [prompt_token_ids(tokenizer, p, chat_template_kwargs) for p in probe_prompts]
        self.every_steps = every_steps
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.seed = seed
        self.resample = resample
        self.batch_size = batch_size
        self.history: list[dict] = []
        self._pending: dict | None = None
        self._fixed_batches: list | None = None

    # ------------------------------------------------------------------------------------------------- measurement
    def _eos_and_pad(self, model):
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        return eos, pad

    def _sample_batches(self, model):
        from transformers import GenerationConfig

        eos, pad = self._eos_and_pad(model)
        config = GenerationConfig(
            do_sample=True,
            temperature=self.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=self.num_samples,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        device = next(model.parameters()).device
        batches = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            for start in range(0, len(self.prompt_ids), self.batch_size):
                chunk = self.prompt_ids[start : start + self.batch_size]
                width = max(len(ids) for ids in chunk)
                prompt = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
                prompt_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
                sequences = model.generate(input_ids=prompt, attention_mask=prompt_mask, generation_config=config)
                completion = sequences[:, width:]
                is_eos = torch.isin(completion, torch.tensor(eos, device=device))
                # completion tokens up to and including the first EOS
                completion_mask = (is_eos.cumsum(1) - is_eos.long() == 0).long()
                prompt_mask = prompt_mask.repeat_interleave(self.num_samples, dim=0)
                batches.append((sequences, torch.cat([prompt_mask, completion_mask], 1), completion_mask))
        return batches

    @torch.no_grad()
    def measure(self, model) -> list[float]:
        """Mean entropy of each internal policy (layers 0..L) on the probe completions of the current model."""
        was_training = model.training
        model.eval()
        try:
            if self.resample or self._fixed_batches is None:
                batches = self._sample_batches(model)
                if not self.resample:
                    self._fixed_batches = batches
            else:
                batches = self._fixed_batches
            totals, count = None, 0.0
            for input_ids, attention_mask, completion_mask in batches:
                tokens = float(completion_mask.sum())
                values = layer_entropies(model, input_ids, attention_mask, completion_mask) * tokens
                totals = values if totals is None else totals + values
                count += tokens
        finally:
            model.train(was_training)
        return (totals / max(count, 1.0)).tolist()

    def _record(self, step: int, model) -> dict:
        values = self.measure(model)
        entry = {f"layer_entropy/{layer}": value for layer, value in enumerate(values)}
        self.history.append({"step": step, **entry})
        return entry

    # --------------------------------------------------------------------------------------------------- callbacks
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step == 0:
            entry = self._record(0, model)
            state.log_history.append({**entry, "step": 0})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % self.every_steps == 0:
            self._pending = self._record(state.global_step, model)
            control.should_log = True  # log at this step, so the values sit beside the step's loss
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or logs is None or any(key.startswith("eval_") for key in logs):
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = None


def install_first(trainer, callback: TrainerCallback) -> TrainerCallback:
    """Add `callback` in front of the trainer's callbacks (before the reporting integrations, so they receive the
    values it adds to the logs)."""
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


def entropy_history(log_history: Sequence[dict]) -> tuple[list[int], dict[int, list[float]]]:
    """(steps, {layer: values}) from a `state.log_history` holding ``layer_entropy/{l}`` entries."""
    steps, series = [], {}
    for entry in log_history:
        keys = [k for k in entry if k.startswith("layer_entropy/")]
        if not keys:
            continue
        steps.append(int(entry.get("step", len(steps))))
        for key in keys:
            series.setdefault(int(key.split("/", 1)[1]), []).append(float(entry[key]))
    if any(len(v) != len(steps) for v in series.values()):
        raise ValueError("Entries with different sets of layers in the log history.")
    return steps, dict(sorted(series.items()))
