r"""Bottom-up policy optimisation (BuPO, Tan et al., arXiv 2512.19673) for `GRPOTrainer` and `PowerFlowTrainer`.

For the first `bupo_steps` optimiser steps the trainer optimises the *internal policy of layer k* (`bupo_layer`)
instead of the model's final policy, then switches to the full model. The internal policy is the logit lens
(`trl_powerflow.bupo.logit_lens`):

    log pi_k(y_t | y_<t) = log_softmax( lm_head( norm( hidden_states[k] ) ) / T )[y_t]

with the model's final norm applied, `k` in 1..num_hidden_layers (`hidden_states[k]` is the output of decoder layer
k; `k = num_hidden_layers` is the final policy itself) and `T` the temperature the trainer scores its policy at
(GRPO: the sampling temperature, as GRPO's fused head does; PowerFlow: 1, the TB loss uses true probabilities).

What changes, and nothing else (the mixin overrides `_get_per_token_logps_and_entropies`, the trainer's one place
where per-token log-probs are computed):

- **GRPOTrainer**: the clipped surrogate is computed on layer-k log-probs (`BuPOGRPOTrainer`).
- **PowerFlowTrainer**: the LA-TB residual uses layer-k log-probs as log pi (`BuPOPowerFlowTrainer`); its fixed
  point is then the layer-k policy matching the PowerFlow target.
- **Old-policy log-probs** (GRPO's ratio and PowerFlow's weight w for reused generations, PowerFlow's 'group' log Z)
  come from the same layer-k policy while BuPO is active, so every ratio compares like with like. A generation
  batch is never used across the switch: when the phase changes, the buffered generations are dropped and new ones
  are sampled (at most one partly used batch is discarded, once).
- **Reference / base model** (GRPO's `beta` KL reference, PowerFlow's p_base): always the full final-layer model,
  also under PEFT (adapter disabled / "ref" adapter).
- **Sampling**: completions are always sampled from the full model (as in BuPO: rollouts come from the LLM, the
  internal policy is what the objective optimises); evaluation (`model.eval()`) always scores the full model.
- **Gradient**: only the embedding, decoder layers 1..k, the final norm and the unembedding receive gradient during
  the BuPO phase (layers above k get no `.grad` at all); from step `bupo_steps` on, the whole model does.
- **PowerFlow's log-partition head**: it keeps reading the backbone's last hidden state (the final, normed one), but
  *detached* during the BuPO phase. log Z'(q) depends only on the prompt and the target p_base^alpha, not on which
  policy is trained, so the head sees the same features across the switch and its estimate carries over; detaching
  keeps the head's loss from sending gradient into the layers above k. After the switch,
  `log_z_detach_features` applies as usual.

The layer-k forward runs the whole backbone once with `output_hidden_states=True` (and final logits for one position
only); the log-probs are computed from materialised layer-k logits, fine for moderate vocabularies and completion
lengths. Text-only models; MoE auxiliary losses and multimodal inputs are not supported in the BuPO phase. Under DDP
keep `ddp_find_unused_parameters` at its default (True without gradient checkpointing): the layers above k are unused
during the BuPO phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from ..config import PowerFlowConfig
from ..trainer import PowerFlowTrainer
from .logit_lens import lens_logits, lens_parts

__all__ = ["BuPOGRPOConfig", "BuPOGRPOTrainer", "BuPOMixin", "BuPOPowerFlowConfig", "BuPOPowerFlowTrainer"]

_LAYER_HELP = (
    "BuPO: index k of the internal layer policy optimised during the first `bupo_steps` optimiser steps, "
    "log_softmax(lm_head(norm(hidden_states[k]))), k in 1..num_hidden_layers (k = num_hidden_layers is the final "
    "policy). None disables BuPO."
)
_STEPS_HELP = (
    "BuPO: number of optimiser steps (>= 0) during which the layer-`bupo_layer` policy is trained instead of the "
    "final one; afterwards the full model is trained. The paper uses 30 of 300."
)


def validate_bupo_fields(config) -> None:
    """ValueError naming the field for an invalid `bupo_layer` / `bupo_steps` (the upper bound of `bupo_layer`, the
    model's number of layers, is checked when the trainer is built)."""
    layer, steps = config.bupo_layer, config.bupo_steps
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
        raise ValueError(
            f"`bupo_layer` must be None or an integer in 1..num_hidden_layers (the decoder layer whose internal "
            f"policy is trained first), got {layer!r}."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`bupo_steps` must be an integer >= 0, got {steps!r}.")
    if layer is None and steps > 0:
        raise ValueError(
            f"`bupo_steps={steps}` needs `bupo_layer` (the layer whose internal policy is trained for those steps); "
            "set `bupo_layer` or leave `bupo_steps` at 0."
        )


@dataclass
class BuPOGRPOConfig(GRPOConfig):
    """`GRPOConfig` plus the BuPO fields `bupo_layer` and `bupo_steps` (see `trl_powerflow.bupo`)."""

    bupo_layer: int | None = field(default=None, metadata={"help": _LAYER_HELP})
    bupo_steps: int = field(default=0, metadata={"help": _STEPS_HELP})

    def __post_init__(self):
        validate_bupo_fields(self)
        super().__post_init__()


@dataclass
class BuPOPowerFlowConfig(PowerFlowConfig):
    """`PowerFlowConfig` plus the BuPO fields `bupo_layer` and `bupo_steps` (see `trl_powerflow.bupo`)."""

    bupo_layer: int | None = field(default=None, metadata={"help": _LAYER_HELP})
    bupo_steps: int = field(default=0, metadata={"help": _STEPS_HELP})

    def __post_init__(self):
        validate_bupo_fields(self)
        super().__post_init__()


def _adapters_disabled_or_ref(model) -> bool:
    """True when a PEFT model currently computes its reference (adapters disabled, or the frozen 'ref' adapter)."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return False
    active = getattr(model, "active_adapter", None)
    if active == "ref" or (isinstance(active, (list, tuple)) and "ref" in active):
        return True
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            return bool(module.disable_adapters)
    return False


class BuPOMixin:
    """Trains the internal policy of layer `args.bupo_layer` for the first `args.bupo_steps` optimiser steps.

    Put it before the trainer class: `class MyTrainer(BuPOMixin, GRPOTrainer)`. `args` must have `bupo_layer` and
    `bupo_steps` (e.g. `BuPOGRPOConfig`, `BuPOPowerFlowConfig`)."""

    # Temperature of the layer-k log-probs: GRPO scores its policy at the sampling temperature, PowerFlow at 1.
    _bupo_at_sampling_temperature = True

    def __init__(self, *args, **kwargs):
        config = kwargs["args"] if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if not (hasattr(config, "bupo_layer") and hasattr(config, "bupo_steps")):
            raise TypeError(
                f"{type(self).__name__} needs `args` with `bupo_layer` and `bupo_steps` (BuPOGRPOConfig or "
                f"BuPOPowerFlowConfig), got {type(config).__name__}."
            )
        validate_bupo_fields(config)
        if config.bupo_layer is not None and config.ddp_find_unused_parameters is None:
            # The layers above k get no gradient while BuPO is active: DDP must look for unused parameters, which
            # transformers turns off by default with gradient checkpointing (TRL's default).
            config.ddp_find_unused_parameters = True
        super().__init__(*args, **kwargs)
        self.bupo_layer = config.bupo_layer
        self.bupo_steps = config.bupo_steps
        self._bupo_parts = None
        self._bupo_force_final = False
        self._bupo_buffer_phase = None
        if self.bupo_layer is not None:
            self._bupo_parts = lens_parts(self.model)
            num_layers = self._bupo_parts.num_layers
            if self.bupo_layer > num_layers:
                raise ValueError(
                    f"`bupo_layer={self.bupo_layer}` is outside the model's layers: it has {num_layers} decoder "
                    f"layers, so `bupo_layer` must be in 1..{num_layers}."
                )

    # ------------------------------------------------------------------------------------------------------ phase
    def bupo_active(self) -> bool:
        """True while the layer-k policy is the one being trained (training mode, before step `bupo_steps`)."""
        return self.bupo_layer is not None and self.model.training and self.state.global_step < self.bupo_steps

    def _bupo_scores_policy(self, model) -> bool:
        """Whether this `_get_per_token_logps_and_entropies` call scores the trained policy (not the reference)."""
        if self._bupo_force_final or not self.bupo_active():
            return False
        if self.ref_model is not None and model is self.ref_model:
            return False
        unwrapped = self.accelerator.unwrap_model(model)
        if unwrapped is not self.accelerator.unwrap_model(self.model):
            return False
        return not _adapters_disabled_or_ref(unwrapped)

    # ---------------------------------------------------------------------------------------- trainer overrides
    def _prepare_inputs(self, generation_batch):
        # Override: never use buffered generations across the switch (their old log-probs belong to the other policy).
        if (
            self.model.training
            and self._bupo_buffer_phase is not None
            and self._bupo_buffer_phase != self.bupo_active()
        ):
            self._buffered_inputs = None
        return super()._prepare_inputs(generation_batch)

    def _generate_and_score_completions(self, inputs):
        # Override: remember which policy (layer k or final) scored this generation batch.
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self._bupo_buffer_phase = self.bupo_active()
        return output

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        # Override: layer-k log-probs of the policy while BuPO is active; the trainer's own computation otherwise.
        if not self._bupo_scores_policy(model):
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal,
            )
        if compute_aux_loss or any(value is not None for value in multimodal.values()):
            raise NotImplementedError("BuPO supports text-only models without MoE auxiliary losses.")
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            step_logps, step_entropy = self._layer_logps(model, ids, mask, logits_to_keep, compute_entropy)
            logps.append(step_logps)
            entropies.append(step_entropy)
        return torch.cat(logps, 0), torch.cat(entropies, 0) if compute_entropy else None, None

    def _layer_logps(self, model, input_ids, attention_mask, logits_to_keep, compute_entropy):
        """Per-token log-probs (and entropies) of the layer-k policy for the last `logits_to_keep` tokens; zero where
        `attention_mask` is 0, like GRPO's fused head."""
        capture = getattr(self, "hidden_capture", None)  # PowerFlowTrainer's recorded forward (None under GRPO)
        request = capture.request if capture is not None else None
        if request is not None:  # PowerFlow's log Z head: same (final) features, no gradient above layer k
            request.detach_features = True
        with self.accelerator.autocast():
            outputs = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,
            )
        hidden = outputs.hidden_states[self.bupo_layer][:, -logits_to_keep - 1 : -1]
        logits = lens_logits(self._bupo_parts, hidden, self.bupo_layer).float()
        if self._bupo_at_sampling_temperature and self.temperature != 1.0:
            logits = logits / self.temperature
        all_logps = torch.log_softmax(logits, dim=-1)
        targets = input_ids[:, -logits_to_keep:]
        valid = attention_mask[:, -logits_to_keep:].bool()
        logps = all_logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1).masked_fill(~valid, 0.0)
        entropy = None
        if compute_entropy:
            entropy = -(all_logps.exp() * all_logps).sum(-1).masked_fill(~valid, 0.0)
        return logps, entropy

    def log(self, logs, start_time=None):
        # Override: say which policy was trained (1 = layer-k internal policy, 0 = full model) in the train logs.
        if self.bupo_layer is not None and "loss" in logs:
            logs["bupo/active"] = float(self.state.global_step <= self.bupo_steps and self.model.training)
        return super().log(logs, start_time)


class BuPOGRPOTrainer(BuPOMixin, GRPOTrainer):
    """`GRPOTrainer` with BuPO: GRPO's clipped surrogate on the layer-k internal policy for the first `bupo_steps`
    optimiser steps, then on the full model. Config: `BuPOGRPOConfig`."""

    _tag_names = ["trl", "grpo", "bupo"]


class BuPOPowerFlowTrainer(BuPOMixin, PowerFlowTrainer):
    """`PowerFlowTrainer` with BuPO: the LA-TB loss on the layer-k internal policy for the first `bupo_steps`
    optimiser steps, then on the full model. Config: `BuPOPowerFlowConfig`."""

    _tag_names = ["trl", "powerflow", "bupo"]
    _bupo_at_sampling_temperature = False  # the TB loss uses temperature-1 log-probs

    @torch.no_grad()
    def _per_token_logps(self, batch, base: bool):
        # Override: p_base is always the full final-layer base model.
        if not base:
            return super()._per_token_logps(batch, base=False)
        self._bupo_force_final = True
        try:
            return super()._per_token_logps(batch, base=True)
        finally:
            self._bupo_force_final = False
