"""The per-prefix value head of `objective='token_balance'`: the log-partition head read at every completion prefix."""

import torch

from ..log_z import GroupLogZ, LearnedLogZ
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


class GroupRootValue(LearnedValue):
    r"""`objective='token_balance'` with `log_z_estimator='group'`: V(root) = log Z(q) is the group's on-policy
    evidence lower bound, the mean over the prompt's completions of alpha (S_base + psi) - S_pi (detached; the
    minimiser of the unnormalised TB residual, `GroupLogZ` with 'tb_traj'), and V(s_t), t >= 1, comes from the head.
    E_pi[alpha (S_base + psi) - S_pi] = log Z - KL(pi || pi*): exact at the fixed point and, of the group constants,
    the closest to log Z on the way. The head's own V(root) lags: it enters only the whole-completion residual,
    weighted 1/|y|^2 among the suffixes (tests/test_exact_fixed_point.py, VALUE_ROOT_LAGS); here it is regressed on
    the group's (`head_loss`). On the digit-chain task this variant collapses to bare guesses, as la_tb_exact does
    (docs/experiment, section 2)."""

    def attach(self, trainer, policy, user_optimizer=None, user_scheduler=None):
        super().attach(trainer, policy, user_optimizer, user_scheduler)
        self.group = GroupLogZ(objective="tb_traj")

    def on_generation(self, trainer, batch, mode, process_slice):
        self.group.on_generation(trainer, batch, mode, process_slice)

    def compute(self, trainer, inputs, request, policy_logps, mask, mode):
        values = super().compute(trainer, inputs, request, policy_logps, mask, mode)
        root = self.group.compute(trainer, inputs, request, policy_logps, mask, mode).to(values.dtype)
        self._root_fit = (values[:, 0], root)
        return torch.cat([root.unsqueeze(1), values[:, 1:]], dim=1)

    def head_loss(self, valid, num_sequences):
        """The head's own V(root) regressed on the group's: sum_y (V_phi(root) - V_group(root))^2 / N, so that the
        head stays a usable V everywhere (and, measured on the toy, the inner values fit better: the two-prompt KL
        falls 95.4-96.0% without this term, 98.5-99.0% with it, seeds 1-2)."""
        head_root, root = self._root_fit
        self._root_fit = None
        return ((head_root - root).pow(2) * valid.to(root.dtype)).sum() / num_sequences
