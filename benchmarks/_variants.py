"""Benchmark-only variants of PowerFlowTrainer, to put a number on each piece of waste (before/after).

Each "before" variant adds back a cost the current trainer avoids; `pf_group_fused` is the other way round: it is the
*suggested* removal of a cost the current trainer still pays (the no-grad policy pass of the group log Z estimate when
training is fully on-policy). None of this is used by the package; the package is not modified.
"""

import torch

from trl_powerflow import PowerFlowTrainer
from trl_powerflow.log_z import ESTIMATORS, LearnedLogZ


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


class SeparateForwardLogZ(LearnedLogZ):
    """The head fed by a second backbone forward over the prompt tokens (with grad)."""

    def _forward_hook(self, module, args, kwargs, output):
        capture = self.trainer.hidden_capture
        request = capture.request
        if request is not None and request.hidden is not None and torch.is_grad_enabled():
            capture.request = None  # do not capture our own extra forward
            try:
                policy = self.trainer.accelerator.unwrap_model(self.trainer.model)
                n_prompt = request.prompt_length
                request.hidden = policy.base_model(
                    input_ids=kwargs["input_ids"][:, :n_prompt],
                    attention_mask=kwargs["attention_mask"][:, :n_prompt],
                    use_cache=False,
                ).last_hidden_state
            finally:
                capture.request = request
        return super()._forward_hook(module, args, kwargs, output)


class SeparateHeadForwardPowerFlow(PowerFlowTrainer):
    """Before: the head's prompt features come from a second forward of the policy backbone over the prompt tokens
    (with grad), instead of the hidden states the loss forward already computed (captured by a hook)."""

    log_z_estimators = {**ESTIMATORS, "head": SeparateForwardLogZ}


class SliceFirstHeadPowerFlow(PowerFlowTrainer):
    """Formerly the suggested micro-fix "slice the prompt positions before concatenating the captured hidden states";
    the trainer now computes the head inside the forward from the prompt positions only, so this arm equals it."""


class FusedGroupPowerFlow(PowerFlowTrainer):
    """Formerly the suggested fix for `log_z_estimator='group'` (compute the group log Z inside the loss from the loss
    forward's detached log-probs when the generation batch is one on-policy micro-batch); `GroupLogZ` now does exactly
    that, so this arm equals the trainer."""


# name: (trainer kind, extra config, reward (True: the cheap reward, a function, or False), trainer class)
VARIANTS = {
    "pf_zero_reward": ("powerflow", {}, zero_reward, PowerFlowTrainer),
    "pf_force_old_pass": ("powerflow", {}, False, ForceOldPassPowerFlow),
    "pf_separate_head_forward": ("powerflow", {}, False, SeparateHeadForwardPowerFlow),
    "pf_detach_features": ("powerflow", {"log_z_detach_features": True}, False, PowerFlowTrainer),
    "pf_head_slice_first": ("powerflow", {}, False, SliceFirstHeadPowerFlow),
    "pf_group_fused": ("powerflow", {"log_z_estimator": "group"}, False, FusedGroupPowerFlow),
}
