"""The per-prefix value head of `objective='token_balance'`: the log-partition head read at every completion prefix."""

import torch

from ..log_z import LearnedLogZ
from .log_z_head import with_log_z
from .token_balance import suffix_balance_residuals


class LearnedValue(LearnedLogZ):
    """The per-prefix value V_phi(s_t) of `objective='token_balance'`: the same head, read at every completion
    position t on the policy's last hidden state of the prefix's last token (position P - 1 + t), so V(s_0) is log
    Z(q) of the prompt alone. Saved, sharded, restored and kept out of vLLM as the log-partition head. No re-centring:
    a constant shift of V is not a minimiser of the suffix residuals (each moves by 1/n_t), the head's own gradient
    steps fit it."""

    def attach(self, trainer, policy, user_optimizer=None, user_scheduler=None):
        recentre, trainer.args.log_z_recentre = trainer.args.log_z_recentre, False
        try:
            super().attach(trainer, policy, user_optimizer, user_scheduler)
        finally:
            trainer.args.log_z_recentre = recentre

    def _forward_hook(self, module, args, kwargs, output):
        """V(s_t) at every completion position: (B, T) for T = input length - prompt length."""
        request = self.trainer.hidden_capture.request
        if request is None or request.hidden is None:
            return None
        hidden, request.hidden = request.hidden, None
        features = hidden[:, request.prompt_length - 1 : -1]
        features = (features.detach() if request.detach_features else features).to(self.head.out.weight.device)
        values = self.head(features)
        request.log_z.append(values)
        return with_log_z(output, values)

    def on_loss(self, stats, log_z, request, mode):
        """Nothing to re-centre."""

    @torch.no_grad()
    def _initialise(self, trainer, policy_logps, inputs, mask, values):
        """Shift V by the first batch's least-squares constant over all suffix residuals (all processes); return it.
        A shift c moves e_t by c / n_t; each completion's residuals weigh 1/|y| as in the loss."""
        residual, tokens_left = suffix_balance_residuals(
            policy_logps.detach(), inputs["base_per_token_logps"], mask, values.detach(), trainer.alpha, inputs["psi"]
        )
        mask = mask.to(residual.dtype)
        slope = mask / tokens_left.clamp(min=1.0)
        row_weight = 1.0 / mask.sum(-1, keepdim=True).clamp(min=1.0)
        sums = torch.stack([(row_weight * slope * residual).sum(), (row_weight * slope.pow(2)).sum()])
        totals = trainer.accelerator.reduce(sums, reduction="sum")
        delta = -(totals[0] / totals[1].clamp(min=1e-12)).item()
        self.head.shift(delta)
        return delta
