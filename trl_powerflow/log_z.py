r"""log Z'(q), the per-token log-partition of the LA-TB target: one interface, two estimators chosen at construction.

- `LearnedLogZ` (`log_z_estimator='head'`): `LogZHead`, an MLP on the masked mean of the policy's last hidden state
  over the prompt tokens (FlowRL-style, PAPER_NOTES §4), run inside the policy's forward, trained with the policy,
  re-centred after each optimizer step and saved beside the weights.
- `GroupLogZ` (`'group'`): no parameters; the residual-minimising constant over the G completions of each prompt,
  `log Z'(q) = mean_i [alpha (S_base,i/|y_i| + psi_i) - S_pi,i/|y_i|]` (`losses.group_log_z`).
- `LearnedValue` (`objective='token_balance'`, `training/value_head.py`): the same head read at every completion
  prefix, V_phi(s_t); with `'group'`, `GroupRootValue` takes V(root) from the group instead.

`PowerFlowTrainer` talks to both through `LogZEstimator` and never asks which one it has. The policy's last hidden
state reaches the head (and the trainer's entropy metric) through `HiddenStateCapture`, a context manager BuPO reuses.
"""

import torch
from torch import nn
from transformers import TrainerCallback

from .losses import group_log_z, log_z_slope, sequence_stats, tb_residual
from .training.hidden_capture import HiddenStateCapture, LogZRequest  # noqa: F401  (re-exported)
from .training.log_z_head import (
    LOG_Z_HEAD_ATTR,
    LogZHead,
    is_log_z_param,
    load_head,
    masked_mean,
    save_gathered_head,
    save_head,
    with_log_z,
)


class LogZEstimator:
    """How the trainer obtains log Z'(q). Every hook has a no-op default; `compute` is the one each estimator defines.

    `head` is the learned module (None without one); `attach` sets the estimator up on a built trainer."""

    head: nn.Module | None = None

    def attach(self, trainer, policy, user_optimizer=None, user_scheduler=None) -> None:
        """Set-up once GRPOTrainer is built: hooks, parameters, callbacks."""

    def add_to_optimizer(self, optimizer) -> None:
        """Give the estimator's parameters their own param group."""

    def on_generation(self, trainer, batch: dict, mode: str, process_slice: slice) -> None:
        """Add what `compute` needs to the generation batch."""

    def compute(self, trainer, inputs, request, policy_logps, mask, mode) -> torch.Tensor:
        """log Z'(q) of each row of the micro-batch, shape (B,)."""
        raise NotImplementedError

    def head_loss(self, valid: torch.Tensor, num_sequences) -> torch.Tensor | float:
        """A term added to the micro-batch's loss (0 unless part of the head is regressed on another estimate)."""
        return 0.0

    def on_loss(self, stats: dict, log_z: torch.Tensor, request, mode: str) -> None:
        """See the loss's per-sequence statistics (e.g. for re-centring after the step)."""

    def save(self, trainer, output_dir: str, state_dict: dict | None) -> dict | None:
        """Save the estimator's state beside the weights; return the model's state dict without it."""
        return state_dict

    def save_gathered(self, trainer, output_dir: str) -> None:
        """Save a whole copy of the estimator's state when the model's state dict was sharded (ZeRO-3, FSDP)."""

    def load(self, checkpoint_dir: str) -> None:
        """Restore the state written by `save`."""

    def restored_keys(self, model) -> set:
        """Keys of `model`'s state dict that `load` restores (not missing from the weights file)."""
        return set()

    def exclude_from_vllm(self, vllm_generation) -> None:
        """Keep the estimator's parameters out of the weights pushed to vLLM."""


class GroupLogZ(LogZEstimator):
    """Head-free group estimate (see module docstring); computed at generation time, or, when the loss sees the whole
    on-policy generation batch, inside the loss from its own detached log-probs (one no-grad policy pass less)."""

    def __init__(self, objective: str | None = None):
        self.objective = objective

    def on_generation(self, trainer, batch, mode, process_slice):
        mask = batch["completion_mask"] * batch.get("tool_mask", 1)
        old = batch.get("old_per_token_logps")
        whole_batch = mode == "eval" or (trainer.args.steps_per_generation == 1 and trainer.num_iterations == 1)
        if old is None and whole_batch:  # rows carry their global group id; log Z comes from the loss forward
            rows = torch.arange(mask.size(0), device=mask.device) + process_slice.start
            batch["group_id"] = rows // self._group_size(trainer, mode)
            return
        if old is None:
            old = trainer._per_token_logps(batch, base=False)
        gathered = self.gathered(trainer, old, batch["base_per_token_logps"], mask, batch["psi"], None, mode)
        batch["group_log_z"] = gathered[process_slice]

    def compute(self, trainer, inputs, request, policy_logps, mask, mode):
        if "group_log_z" in inputs:
            return inputs["group_log_z"]
        base, psi, group_id = inputs["base_per_token_logps"], inputs["psi"], inputs["group_id"]
        return self.gathered(trainer, policy_logps.detach(), base, mask, psi, group_id, mode)

    @staticmethod
    def _group_size(trainer, mode):
        return trainer.num_generations if mode == "train" else trainer.num_generations_eval

    @torch.no_grad()
    def gathered(self, trainer, policy_logps, base_logps, mask, psi, group_id, mode):
        """Group log Z over all processes. Without `group_id` the gathered rows are in group order and every row's
        value is returned; with it (rows shuffled) the values of this process's rows are returned."""
        size, objective = self._group_size(trainer, mode), self.objective or trainer.objective
        s_pi, length = sequence_stats(policy_logps, mask)
        s_base, _ = sequence_stats(base_logps, mask)
        columns = [s_pi, s_base, length, psi.to(s_pi.dtype)]
        if group_id is not None:
            columns.append(group_id.to(s_pi.dtype))
        stats = trainer.accelerator.gather(torch.stack(columns, dim=1))
        if group_id is None:
            return group_log_z(*stats.unbind(1)[:3], trainer.alpha, size, stats[:, 3], objective)
        order = torch.argsort(stats[:, 4], stable=True)  # group ids 0..K-1, each `size` times
        s_pi, s_base, length, psi, _ = stats[order].unbind(1)
        per_group = group_log_z(s_pi, s_base, length, trainer.alpha, size, psi, objective)
        return per_group.view(-1, size)[:, 0][group_id.long()]


class LearnedLogZ(LogZEstimator):
    """The learned head (see module docstring), registered on the policy so that DDP/DeepSpeed/FSDP wrap it."""

    def attach(self, trainer, policy, user_optimizer=None, user_scheduler=None):
        self.trainer, args = trainer, trainer.args
        with torch.random.fork_rng(devices=[]):  # seeded: identical on every process
            torch.manual_seed(args.seed)
            head = LogZHead(policy.config.get_text_config().hidden_size, args.log_z_dropout, init=args.log_z_init)
        lm_head = policy.get_output_embeddings()  # beside it: with `device_map` the features are moved there too
        head.to(lm_head.weight.device if lm_head is not None else trainer.accelerator.device)
        setattr(policy, LOG_Z_HEAD_ATTR, head)
        # Its own FSDP unit under FSDP's transformer-based wrap, so it can also be called outside the root's forward.
        policy._no_split_modules = [*(getattr(policy, "_no_split_modules", None) or []), type(head).__name__]
        self.head, self._ready, self._step_batch = head, False, []
        # Inside the forward of the module DDP/DeepSpeed wraps, its output part of that forward's output: DDP with
        # `find_unused_parameters=True` (LoRA, no checkpointing) sees the head used.
        trainer.hidden_capture.add_hook(trainer.model, self._forward_hook, with_kwargs=True)
        if args.log_z_recentre:
            trainer.add_callback(_RecentreAfterStep(self))
        if user_optimizer is not None:
            if user_scheduler is not None:
                raise ValueError(
                    "A custom (optimizer, scheduler) pair cannot train the log-partition head, which is created "
                    "inside the trainer. Pass only the optimizer (the head is added to it as a param group), or "
                    "use `log_z_estimator='group'`."
                )
            user_optimizer.add_param_group(self._param_group())

    def _forward_hook(self, module, args, kwargs, output):
        """log Z'(q) from the prompt part of the hidden state the capture left on the recorded request."""
        request = self.trainer.hidden_capture.request
        if request is None or request.hidden is None:
            return None
        hidden, request.hidden = request.hidden, None
        prompt_mask = kwargs.get("attention_mask")[:, : request.prompt_length].to(hidden.device)
        features = masked_mean(hidden[:, : request.prompt_length], prompt_mask)
        features = (features.detach() if request.detach_features else features).to(self.head.out.weight.device)
        log_z = self.head(features)
        request.features.append(features.detach())
        request.log_z.append(log_z)
        return with_log_z(output, log_z)

    def _param_group(self):
        lr = self.trainer.args.log_z_learning_rate
        lr = self.trainer.args.learning_rate if lr is None else lr
        return {"params": list(self.head.parameters()), "lr": lr, "weight_decay": 0.0}

    def add_to_optimizer(self, optimizer):
        head_ids = {id(p) for p in self.head.parameters()}
        if any({id(p) for p in group["params"]} == head_ids for group in optimizer.param_groups):
            return  # a user's optimizer: `attach` already gave the head its group
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in head_ids]
        optimizer.add_param_group(self._param_group())

    def compute(self, trainer, inputs, request, policy_logps, mask, mode):
        log_z = request.value()
        if mode == "train" and not self._ready:
            # Read the buffer once (it may come from a checkpoint); afterwards a Python flag avoids a device sync.
            if not bool(self.head.initialised):
                log_z = log_z + self._initialise(trainer, policy_logps, inputs, mask, log_z)
            self._ready = True
        return log_z

    @torch.no_grad()
    def _initialise(self, trainer, policy_logps, inputs, mask, log_z):
        """Shift the head by the first batch's residual-minimising constant (over all processes: the mean residual
        becomes 0, slope-weighted for la_tb_exact); return the shift."""
        base, psi = inputs["base_per_token_logps"], inputs["psi"]
        residual = tb_residual(
            policy_logps.detach(), base, mask, log_z.detach(), trainer.alpha, psi, trainer.objective
        )
        slope = log_z_slope(mask.sum(-1).to(residual.dtype), trainer.objective)
        sums = torch.stack([(slope * residual).sum(), slope.pow(2).sum()])
        totals = trainer.accelerator.reduce(sums, reduction="sum")
        delta = -(totals[0] / totals[1].clamp(min=1e-12)).item()
        self.head.shift(delta)
        return delta

    def on_loss(self, stats, log_z, request, mode):
        if mode == "train" and self.trainer.args.log_z_recentre:
            valid = stats["valid"]
            features = torch.cat(request.features, dim=0)[valid]
            slope = log_z_slope(stats["length"][valid], self.trainer.objective)
            weight, residual = stats["weight"][valid], stats["residual"][valid]
            self._step_batch.append((features, weight * slope, residual, log_z[valid], slope))

    @torch.no_grad()
    def recentre(self):
        """After the optimizer step: shift log Z' by c = -sum w s (r + s (h_new - h_old)) / sum w s^2 over the step's
        completions (all processes), r the residuals the step used, h_new - h_old the head's own move on their
        features (h_new without dropout), s = dr/dlog Z (`log_z_slope`; 1 but for la_tb_exact).
        c = argmin_c sum_y w (r' + s c)^2 for the new head with the step's policy log-probs: the head's move does
        not overshoot; the policy's own move in the step is not re-scored (the next step's shift sees it)."""
        batch, self._step_batch = self._step_batch, []
        sums = torch.zeros(2, dtype=torch.float64, device=self.head.out.weight.device)
        training = self.head.training
        self.head.eval()
        for features, weight_slope, residual, old, slope in batch:
            moved = residual + slope * (self.head(features) - old.detach())  # residual under the new head
            sums += torch.stack([(weight_slope * moved).sum(), (weight_slope * slope).sum()]).to(sums)
        self.head.train(training)
        sums = self.trainer.accelerator.reduce(sums, reduction="sum")
        if sums[1] > 0:
            self.head.shift(-(sums[0] / sums[1]).item())

    def save(self, trainer, output_dir, state_dict):
        return save_head(trainer, output_dir, state_dict)

    def save_gathered(self, trainer, output_dir):
        save_gathered_head(trainer, self.head, output_dir)

    def load(self, checkpoint_dir):
        load_head(self.head, checkpoint_dir)

    def restored_keys(self, model):
        return {key for key in model.state_dict() if is_log_z_param(key)}

    def exclude_from_vllm(self, vllm_generation):
        iterate = vllm_generation._iter_named_params
        vllm_generation._iter_named_params = lambda: ((n, p) for n, p in iterate() if not is_log_z_param(n))


class _RecentreAfterStep(TrainerCallback):
    """Re-centre log Z' right after each optimizer step (before any checkpoint of that step is saved)."""

    def __init__(self, estimator: LearnedLogZ):
        self.estimator = estimator

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.estimator.recentre()


ESTIMATORS = {"head": LearnedLogZ, "group": GroupLogZ}  # `log_z_estimator` -> class
