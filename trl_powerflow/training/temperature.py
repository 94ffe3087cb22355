r"""Per-token log-probs and entropy at the sampling temperature T from hidden states a forward already computed.

PowerFlow's TB loss needs temperature-1 log-probs, so its fused LM head runs at T = 1; GRPO's KL term (`beta`) and
its logged entropy use `log softmax(z / T)`. `TemperatureScorer` runs TRL's own fused LM head (`add_fused_lm_head`,
with the model's logit softcapping and scaling, and its ZeRO-3 / FSDP gathering) at T on hidden states the capture
kept, so both quantities equal GRPOTrainer's without a second backbone pass.
"""

import contextlib
import copy
import types

import torch
from torch import nn
from trl.trainer.utils import add_fused_lm_head


class _KeptHiddenStates(nn.Module):
    """A stand-in model for `add_fused_lm_head`: its backbone returns the hidden state set on it, its LM head is the
    policy's (looked up on each call, as PEFT / FSDP may replace it)."""

    def __init__(self, model):
        super().__init__()
        config = copy.deepcopy(model.config)
        if hasattr(config.get_text_config(), "output_router_logits"):
            config.get_text_config().output_router_logits = False  # the MoE aux loss belongs to the real forward
        self.config = config
        self._owner = (model,)  # in a tuple, not a submodule: the stand-in owns no parameters
        self.hidden = None

    @property
    def base_model(self):
        return lambda *args, **kwargs: types.SimpleNamespace(last_hidden_state=self.hidden)

    def get_output_embeddings(self):
        return self._owner[0].get_output_embeddings()

    def forward(self, **kwargs):  # replaced by the fused forward
        raise NotImplementedError


class TemperatureScorer:
    """`scorer(hidden_chunks, input_ids, attention_mask, logits_to_keep) -> (log_probs, entropy)` at `temperature`,
    shapes `(B, logits_to_keep)`, labels built as GRPOTrainer builds them; differentiable through the hidden states."""

    def __init__(self, model, temperature: float, cast_lm_head_to_fp32: bool = False, autocast=None):
        self.temperature = temperature
        self._stand_in = _KeptHiddenStates(model)
        add_fused_lm_head(
            self._stand_in, temperature=temperature, cast_lm_head_to_fp32=cast_lm_head_to_fp32,
            outputs=("log_probs", "entropy"),
        )  # fmt: skip
        self._autocast = autocast or contextlib.nullcontext

    def __call__(self, hidden_chunks, input_ids, attention_mask, logits_to_keep):
        log_probs, entropies, start = [], [], 0
        for hidden in hidden_chunks:
            end = start + hidden.size(0)
            labels = input_ids[start:end].masked_fill(attention_mask[start:end] == 0, -100)
            labels[:, :-logits_to_keep] = -100
            self._stand_in.hidden = hidden
            try:
                with self._autocast():
                    out = self._stand_in(labels=labels, fused_lm_head=True)
            finally:
                self._stand_in.hidden = None
            log_probs.append(out.log_probs[:, -logits_to_keep:])
            entropies.append(out.entropy[:, -logits_to_keep:])
            start = end
        return torch.cat(log_probs, dim=0), torch.cat(entropies, dim=0)
