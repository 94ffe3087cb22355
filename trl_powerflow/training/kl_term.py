r"""`beta`'s KL term exactly as GRPOTrainer computes it (its default loss_type 'dapo'):

    beta * sum_t [k3(log pi_T, log p_base,T) * (pi_T / pi_old,T if use_bias_correction_kl)] / tokens of the step,

with log-probs of logits divided by the sampling temperature T (`kl_at_temperature_one=True`: T = 1). The TB loss
scores at T = 1, so at T != 1 the log-probs at T come from hidden states the forwards already computed
(`TemperatureScorer`): the policy's in the loss forward, the base's (and, with the bias correction and reused
generations, the old policy's) at generation, beside their T = 1 log-probs.
"""

from contextlib import contextmanager

import torch

from ..losses import k3_kl, sequence_stats
from .temperature import TemperatureScorer


class GRPOKLTerm:
    """Built once by the trainer; `at_t` says whether the term needs log-probs at T != 1."""

    def __init__(self, trainer, policy, hidden_capture, beta: float):
        from ..log_z import HiddenStateCapture

        args, autocast = trainer.args, trainer.accelerator.autocast
        self.beta, self.bias_correction = beta, args.use_bias_correction_kl
        self.at_t = trainer.temperature != 1.0 and beta != 0.0 and not args.kl_at_temperature_one
        self.policy_scoring = None  # (capture, scorer) of the policy (and the base under PEFT), the base's
        self.base_scoring = None
        if trainer.temperature != 1.0:  # the scorer also gives the entropy at T that GRPO logs
            scorer = TemperatureScorer(policy, trainer.temperature, args.cast_lm_head_to_fp32, autocast)
            self.policy_scoring = self.base_scoring = (hidden_capture, scorer)
            if self.at_t and trainer.ref_model is not None:
                ref = getattr(trainer.ref_model, "module", trainer.ref_model)
                scorer = TemperatureScorer(ref, trainer.temperature, args.cast_lm_head_to_fp32, autocast)
                self.base_scoring = (HiddenStateCapture(ref.base_model), scorer)

    @contextmanager
    def generation(self, trainer):
        """Around GRPO's generation: with log-probs at T needed, GRPO must not score the base at T = 1 itself."""
        beta, trainer.beta = trainer.beta, 0.0 if self.at_t else trainer.beta
        try:
            yield
        finally:
            trainer.beta = beta

    def add_to_batch(self, trainer, batch, base_logps):
        """The base's T = 1 log-probs (`base_logps`, or computed), and with `at_t` the base's (and the old policy's)
        log-probs at T from the same forwards. Returns the T = 1 base log-probs."""
        if self.at_t:
            base_logps, batch["base_per_token_logps_at_t"] = self._scored(trainer, batch, self.base_scoring, True)
            if self.bias_correction and batch.get("old_per_token_logps") is not None:
                batch["old_per_token_logps_at_t"] = self._scored(trainer, batch, self.policy_scoring, False)[1]
        return trainer._per_token_logps(batch, base=True) if base_logps is None else base_logps

    @staticmethod
    @torch.no_grad()
    def _scored(trainer, batch, scoring, base):
        capture, scorer = scoring
        with capture.record(batch["prompt_ids"].size(1), keep_hidden=True) as request:
            logps = trainer._per_token_logps(batch, base=base)
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        return logps, scorer(request.kept_hidden, input_ids, attention_mask, batch["completion_ids"].size(1))[0]

    def loss_forward_scores(self, request, input_ids, attention_mask, num_completion_tokens):
        """(log-probs at T, entropy at T) of the loss forward from its kept hidden states; (None, None) at T = 1.
        Differentiable when the term needs them."""
        if self.policy_scoring is None:
            return None, None
        with torch.set_grad_enabled(self.at_t and torch.is_grad_enabled()):
            scores = self.policy_scoring[1](request.kept_hidden, input_ids, attention_mask, num_completion_tokens)
        request.kept_hidden.clear()
        return scores

    def __call__(self, policy_logps, logps_at_t, inputs, mask, num_tokens):
        """(beta * the term, the per-sequence summed KL for the metrics)."""
        base, old = inputs["base_per_token_logps"], inputs.get("old_per_token_logps")
        if self.at_t:
            policy_logps, base, old = (
                logps_at_t,
                inputs["base_per_token_logps_at_t"],
                inputs.get("old_per_token_logps_at_t"),
            )
        per_token_kl = k3_kl(policy_logps, base)
        if self.bias_correction:
            old = policy_logps.detach() if old is None else old
            per_token_kl = per_token_kl * torch.exp(policy_logps - old)
        return self.beta * (per_token_kl * mask).sum() / num_tokens, sequence_stats(per_token_kl.detach(), mask)[0]
