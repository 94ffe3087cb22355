"""Benchmark-only variants of PowerFlowTrainer, to put a number on each piece of waste (before/after).

Each "before" variant adds back a cost the current trainer avoids; `pf_group_fused` is the other way round: it is the
*suggested* removal of a cost the current trainer still pays (the no-grad policy pass of the group log Z estimate when
training is fully on-policy). None of this is used by the package; the package is not modified.
"""

import torch

from trl_powerflow import PowerFlowTrainer
from trl_powerflow.losses import residual_from_sums, sequence_stats


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


class ForceOldPassPowerFlow(PowerFlowTrainer):
    """Before: always run the no-grad old-policy log-prob pass, as a trainer does that does not skip it when the
    generation batch is used for exactly one on-policy optimizer step (then w = 1 and the pass is useless)."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if "old_per_token_logps" not in output:
            output["old_per_token_logps"] = self._per_token_logps(output, base=False)
        return output


class SeparateHeadForwardPowerFlow(PowerFlowTrainer):
    """Before: the head's prompt features come from a second forward of the policy backbone over the prompt tokens
    (with grad), instead of the hidden states the loss forward already computed (captured by a hook)."""

    def _log_z_forward_hook(self, module, args, kwargs, output):
        request = self._log_z_request
        if request is not None and request.hidden is not None and torch.is_grad_enabled():
            self._log_z_request = None  # do not capture our own extra forward
            try:
                policy = self.accelerator.unwrap_model(self.model)
                n_prompt = request.prompt_length
                request.hidden = policy.base_model(
                    input_ids=kwargs["input_ids"][:, :n_prompt],
                    attention_mask=kwargs["attention_mask"][:, :n_prompt],
                    use_cache=False,
                ).last_hidden_state
            finally:
                self._log_z_request = request
        return super()._log_z_forward_hook(module, args, kwargs, output)


class SliceFirstHeadPowerFlow(PowerFlowTrainer):
    """Formerly the suggested micro-fix "slice the prompt positions before concatenating the captured hidden states";
    the trainer now computes the head inside the forward from the prompt positions only, so this arm equals it."""


class FusedGroupPowerFlow(PowerFlowTrainer):
    """Suggested fix for `log_z_estimator='group'`: when the generation batch is one micro-batch trained once
    (steps_per_generation == 1, num_iterations == 1), pi_old == pi_theta, so the group log Z can be computed inside
    the loss from the *detached* log-probs of the loss forward (gathered over processes, grouped by a group id) instead
    of a separate no-grad policy forward at generation time. Same value, one forward less per generation batch."""

    def _generate_and_score_completions(self, inputs):
        fused = self.args.steps_per_generation == 1 and self.num_iterations == 1 and self.model.training
        if not fused:
            return super()._generate_and_score_completions(inputs)
        self.args.log_z_estimator = "deferred"  # PowerFlowTrainer then skips its generation-time group estimate
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self.args.log_z_estimator = "group"
        n = output["completion_mask"].size(0)
        start = self.accelerator.process_index * n
        output["group_id"] = torch.arange(start, start + n, device=output["completion_mask"].device) // (
            self.num_generations
        )
        output["group_log_z"] = torch.zeros(n, device=output["completion_mask"].device)
        return output

    def _compute_loss(self, model, inputs):
        self._fused_inputs = inputs if "group_id" in inputs else None
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._fused_inputs = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        inputs = getattr(self, "_fused_inputs", None)
        if inputs is not None and torch.is_grad_enabled():
            with torch.no_grad():
                mask = inputs["completion_mask"]
                if "tool_mask" in inputs:
                    mask = mask * inputs["tool_mask"]
                s_pi, length = sequence_stats(out[0].detach(), mask)
                s_base, _ = sequence_stats(inputs["base_per_token_logps"], mask)
                zeros = torch.zeros_like(s_pi)
                target = -residual_from_sums(s_pi, s_base, length, zeros, self.alpha, inputs["psi"], self.objective)
                valid = (length > 0).to(target.dtype)
                local = torch.stack([target * valid, valid, inputs["group_id"].to(target.dtype)], dim=1)
                stats = self.accelerator.gather(local)
                gid = stats[:, 2].long()
                n_groups = stats.size(0) // self.num_generations  # known shape: no host read
                num = torch.zeros(n_groups, dtype=target.dtype, device=target.device).index_add_(0, gid, stats[:, 0])
                den = torch.zeros(n_groups, dtype=target.dtype, device=target.device).index_add_(0, gid, stats[:, 1])
                log_z = torch.where(den > 0, num / den.clamp(min=1.0), torch.zeros_like(num))
                inputs["group_log_z"] = log_z[inputs["group_id"]]
        return out


# name: (trainer kind, extra config, reward (True: the cheap reward, a function, or False), trainer class)
VARIANTS = {
    "pf_zero_reward": ("powerflow", {}, zero_reward, PowerFlowTrainer),
    "pf_force_old_pass": ("powerflow", {}, False, ForceOldPassPowerFlow),
    "pf_separate_head_forward": ("powerflow", {}, False, SeparateHeadForwardPowerFlow),
    "pf_detach_features": ("powerflow", {"log_z_detach_features": True}, False, PowerFlowTrainer),
    "pf_head_slice_first": ("powerflow", {}, False, SliceFirstHeadPowerFlow),
    "pf_group_fused": ("powerflow", {"log_z_estimator": "group"}, False, FusedGroupPowerFlow),
}
