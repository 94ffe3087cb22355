"""`PowerFlowTrainer`: GRPOTrainer with the reward/advantage loss replaced by length-aware trajectory balance."""

import copy
import os
import textwrap
import warnings

import torch
from accelerate.utils import is_peft_model
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import (
    add_fused_lm_head,
    create_model_from_path,
    disable_dropout_in_model,
    get_config_model_id,
    use_adapter,
)

from .config import PowerFlowConfig
from .data import check_prompt_dataset
from .log_z_head import (
    LOG_Z_HEAD_ATTR,
    LOG_Z_HEAD_FILE,
    LogZHead,
    LogZRequest,
    full_head_state,
    is_log_z_param,
    load_full_head_state,
    masked_mean,
    split_log_z_state_dict,
    with_log_z,
)
from .losses import effective_sample_size, group_log_z, k3_kl, powerflow_loss, sequence_stats, tb_residual

logger = logging.get_logger(__name__)

# Warn (with the numbers) when the mean |TB residual| of a micro-batch exceeds this, or the normalised ESS of the
# unclipped pi/pi_old falls below this (or below 2 effective completions): a policy far from its target, or
# generations reused far off-policy.
LARGE_RESIDUAL = 10.0
LOW_ESS = 0.1

# Keys of the generation batch that carry multimodal inputs for `_get_per_token_logps_and_entropies`.
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def _no_shaping(prompts, **kwargs):
    """Placeholder reward function: GRPOTrainer requires one; PowerFlowTrainer removes it after init."""
    return [0.0] * len(prompts)


class PowerFlowTrainer(GRPOTrainer):
    r"""
    Trainer for PowerFlow: label-free fine-tuning towards `p_base(y|q)^alpha` (arXiv 2603.18363).

    Same constructor as [`~trl.GRPOTrainer`]. The changes w.r.t. GRPOTrainer are:
    - the loss: `sum_y w(y) r(y)^2 / N` with the length-aware TB residual
      `r = log Z'(q) + mean_t log pi - alpha * (mean_t log p_base + psi)` replaces the clipped surrogate; every
      completion with tokens weighs 1/N whatever the split; `beta > 0` adds GRPO's own KL term, MoE models their
      aux loss;
    - no advantages: `reward_funcs` is optional (label-free by default); given, their weighted sum is psi(y);
    - p_base is the frozen starting checkpoint (a frozen copy, or the policy with its adapter disabled under PEFT),
      scored at temperature 1 like the policy, whatever the sampling temperature;
    - log Z'(q): a learned head on the policy's prompt hidden states (run inside the wrapped forward, saved beside the
      weights, re-centred after each optimizer step) or the head-free group estimate;
    - logging: TB metrics, a completions table with w / log Z' / residual, and a stop on non-finite values.
    """

    _tag_names = ["trl", "powerflow"]
    _name = "PowerFlow"
    _paper = {
        "title": "PowerFlow",  # the arXiv id, venue and authors are those of PAPER_NOTES; the full title is not there
        "id": "2603.18363",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{chen2026powerflow,
                title        = {{PowerFlow}},
                author       = {Chen and Chen and Li and Huang},
                booktitle    = {International Conference on Machine Learning (ICML)},
                year         = 2026,
                eprint       = {arXiv:2603.18363},
            }"""),
    }

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: PowerFlowConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = PowerFlowConfig(f"{model_name.split('/')[-1]}-PowerFlow")
        elif not isinstance(args, PowerFlowConfig):
            raise TypeError(
                f"`args` must be a `PowerFlowConfig` (a `GRPOConfig` with the PowerFlow fields), got "
                f"{type(args).__name__}. Replace `GRPOConfig(...)` with `PowerFlowConfig(...)`."
            )
        check_prompt_dataset("train_dataset", train_dataset, needs_prompt=environment_factory is None)
        if isinstance(eval_dataset, dict):
            for name, dataset in eval_dataset.items():
                check_prompt_dataset(f"eval_dataset[{name!r}]", dataset, needs_prompt=environment_factory is None)
        else:
            check_prompt_dataset("eval_dataset", eval_dataset, needs_prompt=environment_factory is None)

        if reward_funcs is None:
            reward_funcs = []
        elif not isinstance(reward_funcs, list):
            reward_funcs = [reward_funcs]
        placeholder = not reward_funcs
        if placeholder and args.reward_weights is not None:
            raise ValueError(
                "`reward_weights` is set but no `reward_funcs` were given: remove it or pass reward_funcs."
            )

        _warn_undetermined_target(args)

        # The frozen base: a copy of an instantiated policy (before PEFT/patching); from its path otherwise.
        base_copy = None
        if peft_config is None and not isinstance(model, str) and not is_peft_model(model):
            zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
            if not zero3:
                base_copy = copy.deepcopy(model)
        if peft_config is None and not isinstance(model, str) and is_peft_model(model) and args.beta == 0.0:
            _add_ref_adapter(model)  # GRPOTrainer does this only for beta != 0; PowerFlow always needs the base

        # With a copy of the in-memory policy as p_base, GRPOTrainer must not load a second reference model from the
        # policy's path when beta != 0 (another base for the same model and twice the memory): hide beta from it.
        beta = args.beta
        if base_copy is not None:
            args.beta = 0.0
        try:
            super().__init__(
                model,
                reward_funcs=[_no_shaping] if placeholder else reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                tools=tools,
                rollout_func=rollout_func,
                environment_factory=environment_factory,
            )
        finally:
            args.beta = beta
        self.beta = beta
        if placeholder:  # environments with `get_reward` may have appended real reward sources after it
            self.reward_funcs.pop(0)
            self.reward_func_names.pop(0)
            self.reward_processing_classes.pop(0)
            self.reward_weights = self.reward_weights[1:]

        self.alpha = args.alpha
        self.objective = args.objective
        self._rewards_per_func = None
        self._log_z_request = None  # LogZRequest of the policy forward in progress, if it needs log Z'(q)
        self._log_z_ready = False
        self._recentre_batch = []  # (features, w, r, log Z') of this optimizer step's completions, for re-centring

        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
        if self.temperature != 1.0:
            # GRPO's fused LM head divides logits by the sampling temperature; the TB loss needs true probabilities.
            add_fused_lm_head(
                policy,
                temperature=1.0,
                cast_lm_head_to_fp32=args.cast_lm_head_to_fp32,
                outputs=("log_probs", "entropy"),
            )
            if self.ref_model is not None:
                add_fused_lm_head(
                    getattr(self.ref_model, "module", self.ref_model),
                    temperature=1.0,
                    cast_lm_head_to_fp32=args.cast_lm_head_to_fp32,
                )
        if self.ref_model is None and not is_peft_model(self.model):
            self.ref_model = self._create_base_model(base_copy, quantization_config)

        if args.log_z_estimator == "head" or self.temperature != 1.0:
            policy.base_model.register_forward_hook(self._capture_hidden_hook)
        self.log_z_head = None
        if args.log_z_estimator == "head":
            self.log_z_head = self._attach_log_z_head(policy)
            # The head runs inside the forward of the module DDP/DeepSpeed wraps and its output is part of that
            # forward's output, so DDP with `find_unused_parameters=True` (LoRA, no checkpointing) sees it used.
            self.model.register_forward_hook(self._log_z_forward_hook, with_kwargs=True)
            if args.log_z_recentre:
                self.add_callback(_RecentreLogZ(self))
            user_optimizer, user_scheduler = optimizers
            if user_optimizer is not None:
                if user_scheduler is not None:
                    raise ValueError(
                        "A custom (optimizer, scheduler) pair cannot train the log-partition head, which is created "
                        "inside the trainer. Pass only the optimizer (the head is added to it as a param group), or "
                        "use `log_z_estimator='group'`."
                    )
                user_optimizer.add_param_group(self._log_z_param_group())
        if self.use_vllm:
            self._exclude_log_z_from_vllm_sync()

    # ------------------------------------------------------------------------------------------------- set-up helpers
    def _create_base_model(self, base_copy, quantization_config):
        """Frozen p_base for full fine-tuning, prepared like GRPOTrainer's reference model."""
        args = self.args
        if base_copy is not None:
            base = base_copy
        else:
            model_init_kwargs = dict(args.model_init_kwargs or {})
            if quantization_config is not None:
                model_init_kwargs["quantization_config"] = quantization_config
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                model_init_kwargs["device_map"] = None
            model_init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model_init_kwargs.setdefault("dtype", self.model.dtype)
            model_init_kwargs.setdefault("attn_implementation", self.model.config._attn_implementation)
            base = create_model_from_path(get_config_model_id(self.model.config), **model_init_kwargs)
        base.requires_grad_(False)
        base.eval()
        if args.disable_dropout:
            disable_dropout_in_model(base)
        add_fused_lm_head(base, temperature=1.0, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(base, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(base, self.accelerator)
        return self.accelerator.prepare_model(base, evaluation_mode=True)

    def _attach_log_z_head(self, policy):
        """Build the head (seeded, identical on every process) and register it on the policy so that the optimizer,
        DDP/DeepSpeed wrapping and checkpoints include it; hook the backbone to reuse its hidden states."""
        args = self.args
        hidden_size = policy.config.get_text_config().hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            head = LogZHead(hidden_size, dropout=0.0 if args.disable_dropout else 0.1, init=args.log_z_init)
        # Beside the LM head: with `device_map` the backbone's last hidden state is moved there too.
        lm_head = policy.get_output_embeddings()
        head.to(lm_head.weight.device if lm_head is not None else self.accelerator.device)
        setattr(policy, LOG_Z_HEAD_ATTR, head)
        # Its own FSDP unit under FSDP's transformer-based wrap, so it can also be called outside the root's forward.
        policy._no_split_modules = [*(getattr(policy, "_no_split_modules", None) or []), type(head).__name__]

        return head

    def _capture_hidden_hook(self, module, inputs, output):
        """Forward hook of the policy's backbone: keep its last hidden state for the forward in progress."""
        request = self._log_z_request
        if request is not None:
            request.hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            if request.keep_hidden:
                request.kept_hidden.append(request.hidden.detach())

    def _log_z_forward_hook(self, module, args, kwargs, output):
        """Forward hook of the outermost policy module: log Z'(q) from the captured prompt hidden states."""
        request = self._log_z_request
        if request is None or request.hidden is None:
            return None
        hidden, request.hidden = request.hidden, None
        attention_mask = kwargs.get("attention_mask")
        prompt_mask = attention_mask[:, : request.prompt_length].to(hidden.device)
        features = masked_mean(hidden[:, : request.prompt_length], prompt_mask)
        if request.detach_features:
            features = features.detach()
        features = features.to(self.log_z_head.out.weight.device)
        log_z = self.log_z_head(features)
        request.features.append(features.detach())
        request.log_z.append(log_z)
        return with_log_z(output, log_z)

    def _log_z_param_group(self):
        lr = self.args.log_z_learning_rate
        return {
            "params": list(self.log_z_head.parameters()),
            "lr": self.args.learning_rate if lr is None else lr,
            "weight_decay": 0.0,
        }

    def _exclude_log_z_from_vllm_sync(self):
        """The head is not part of the language model: never push it to the vLLM engine."""
        iterate = self.vllm_generation._iter_named_params

        def without_head():
            for name, param in iterate():
                if not is_log_z_param(name):
                    yield name, param

        self.vllm_generation._iter_named_params = without_head

    # ------------------------------------------------------------------------------------------ GRPOTrainer overrides
    def create_optimizer(self, model=None):
        # Override: the log-partition head gets its own param group (own learning rate, no weight decay).
        optimizer = super().create_optimizer(model)
        if self.log_z_head is not None:
            head_ids = {id(p) for p in self.log_z_head.parameters()}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in head_ids]
            optimizer.add_param_group(self._log_z_param_group())
        return optimizer

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Override: no reward function means no reward computation at all; otherwise keep the raw rewards for psi(y).
        if not self.reward_funcs:
            n = len(prompts) * self.accelerator.num_processes
            self._rewards_per_func = torch.zeros(n, 0, device=self.accelerator.device)
        else:
            self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _generate_and_score_completions(self, inputs):
        # Override: add what the TB loss needs to the generation batch: base log-probs, psi(y), group log Z.
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if not self.reward_funcs:  # GRPO's reward statistics are meaningless without a reward
            for key in ("reward", "reward_std", "frac_reward_zero_std"):
                self._metrics[mode].pop(key, None)

        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        num_local = mask.size(0)
        base_logps = output.get("ref_per_token_logps")  # already computed by GRPO when beta != 0
        if base_logps is None:
            base_logps = self._per_token_logps(output, base=True)
        output["base_per_token_logps"] = base_logps
        # Completions with tokens in the whole generation batch (all processes): every one weighs 1/N in the loss.
        output["num_sequences_in_batch"] = self.accelerator.gather((mask.sum(-1) > 0).sum()).sum()
        # Row of each completion in the gathered batch (GRPO's completions-table order), for the table's TB columns.
        num_rows = num_local * self.accelerator.num_processes
        output["row_index"] = torch.arange(num_local, device=mask.device) + self.accelerator.process_index * num_local
        self._table_stats = torch.full((num_rows, 3), float("nan"))

        process_slice = slice(
            self.accelerator.process_index * num_local, (self.accelerator.process_index + 1) * num_local
        )
        rewards = self._rewards_per_func
        psi = (rewards * self.reward_weights.to(rewards.device).unsqueeze(0)).nansum(dim=1)
        output["psi"] = psi[process_slice].to(base_logps.dtype)

        if self.args.log_z_estimator == "group":
            num_generations = self.num_generations if mode == "train" else self.num_generations_eval
            old = output.get("old_per_token_logps")
            whole_batch = mode == "eval" or (self.args.steps_per_generation == 1 and self.num_iterations == 1)
            if old is None and whole_batch:
                # On-policy and the loss sees this whole batch: compute log Z there from the loss forward's own
                # (detached) log-probs instead of running a policy forward now; rows carry their global group id.
                rows = torch.arange(num_local, device=mask.device) + process_slice.start
                output["group_id"] = rows // num_generations
            else:
                if old is None:
                    old = self._per_token_logps(output, base=False)
                output["group_log_z"] = self._gathered_group_log_z(old, base_logps, mask, output["psi"], None, mode)[
                    process_slice
                ]
        return output

    def _compute_loss(self, model, inputs):
        # Override: the LA-TB loss (losses.powerflow_loss) replaces GRPO's clipped surrogate.
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        mode = "train" if self.model.training else "eval"

        if self.log_z_head is not None or self.temperature != 1.0:
            self._log_z_request = LogZRequest(
                prompt_ids.size(1), self.args.log_z_detach_features, keep_hidden=self.temperature != 1.0
            )
        request = self._log_z_request
        try:
            per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                compute_entropy=True,
                compute_aux_loss=self.aux_loss_enabled,
                **{k: inputs.get(k) for k in _FORWARD_KEYS},
            )
        finally:
            self._log_z_request = None

        if self.temperature != 1.0:  # GRPO logs the entropy of the sampler, at the sampling temperature
            entropies = self._entropy_at_sampling_temperature(model, request.kept_hidden, completion_ids.size(1), mask)
        if self.log_z_head is not None:
            log_z = request.value()
        elif "group_log_z" in inputs:
            log_z = inputs["group_log_z"]
        else:
            log_z = self._gathered_group_log_z(
                per_token_logps.detach(), inputs["base_per_token_logps"], mask, inputs["psi"], inputs["group_id"], mode
            )

        base_logps = inputs["base_per_token_logps"]
        old_logps = inputs.get("old_per_token_logps")
        if self.log_z_head is not None and mode == "train" and not self._log_z_ready:
            # Read the buffer once (it may come from a checkpoint); afterwards a Python flag avoids a device sync.
            if not bool(self.log_z_head.initialised):
                log_z = log_z + self._initialise_log_z(per_token_logps, base_logps, mask, log_z, inputs["psi"])
            self._log_z_ready = True

        # Every completion with tokens weighs 1/N, N = their number in the generation batch over all processes,
        # whatever the split: DDP averages the processes, and an optimizer step sees GA/steps_per_generation of it.
        num_sequences = inputs["num_sequences_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        num_tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            share = self.current_gradient_accumulation_steps / self.args.steps_per_generation
            num_sequences, num_tokens = num_sequences * share, num_tokens * share
        loss, stats = powerflow_loss(
            per_token_logps,
            base_logps,
            mask,
            log_z,
            self.alpha,
            psi=inputs["psi"],
            old_logps=old_logps,
            objective=self.objective,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            weight_level=self.args.tb_weight_level,
            num_sequences=num_sequences,
        )
        kl_sum = None
        if self.beta != 0.0:
            # GRPO's KL term exactly (its default loss_type 'dapo'): per-token k3, times the differentiable ratio
            # pi/pi_old with `use_bias_correction_kl`, summed over tokens and divided by the tokens of the step.
            per_token_kl = k3_kl(per_token_logps, base_logps)
            if self.args.use_bias_correction_kl:
                old = per_token_logps.detach() if old_logps is None else old_logps
                per_token_kl = per_token_kl * torch.exp(per_token_logps - old)
            loss = loss + self.beta * (per_token_kl * mask).sum() / num_tokens
            kl_sum = sequence_stats(per_token_kl.detach(), mask)[0]
        if self.aux_loss_enabled:  # MoE load balancing, as GRPOTrainer adds it
            loss = loss + self.router_aux_loss_coef * aux_loss / (
                self.current_gradient_accumulation_steps if mode == "train" else 1.0
            )
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        self._log_tb_metrics(mode, per_token_logps, base_logps, mask, log_z, stats, entropies, kl_sum, inputs, loss)
        if mode == "train" and self.log_z_head is not None and self.args.log_z_recentre:
            valid = stats["valid"]
            features = torch.cat(request.features, dim=0)[valid]
            self._recentre_batch.append((features, stats["weight"][valid], stats["residual"][valid], log_z[valid]))
        return loss

    @torch.no_grad()
    def _entropy_at_sampling_temperature(self, model, hidden, num_completion_tokens, mask, chunk_size=1024):
        """Per-token entropy of softmax(logits / T) at the completion positions, from the loss forward's hidden states
        (no extra backbone pass; one no-grad LM-head projection, `chunk_size` positions at a time)."""
        lm_head = self.accelerator.unwrap_model(model).get_output_embeddings()
        hidden = torch.cat(hidden, dim=0)[:, -num_completion_tokens - 1 : -1]
        flat = hidden.reshape(-1, hidden.size(-1)).to(lm_head.weight.device)
        entropies = []
        for start in range(0, flat.size(0), chunk_size):
            logits = lm_head(flat[start : start + chunk_size]).float() / self.temperature
            log_probs = torch.log_softmax(logits, dim=-1)
            entropies.append(-(log_probs.exp() * log_probs).sum(-1))
        return torch.cat(entropies).view(mask.shape).to(mask.device) * mask

    @torch.no_grad()
    def _gathered_group_log_z(self, policy_logps, base_logps, mask, psi, group_id, mode):
        """Group log Z over all processes. Without `group_id` the gathered rows are in group order and every row's
        value is returned; with it (rows shuffled) the values of this process's rows are returned."""
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        s_pi, length = sequence_stats(policy_logps, mask)
        s_base, _ = sequence_stats(base_logps, mask)
        columns = [s_pi, s_base, length, psi.to(s_pi.dtype)]
        if group_id is not None:
            columns.append(group_id.to(s_pi.dtype))
        stats = self.accelerator.gather(torch.stack(columns, dim=1))
        if group_id is None:
            return group_log_z(*stats.unbind(1)[:3], self.alpha, num_generations, stats[:, 3], self.objective)
        order = torch.argsort(stats[:, 4], stable=True)  # group ids 0..K-1, each num_generations times
        s_pi, s_base, length, psi, _ = stats[order].unbind(1)
        per_group = group_log_z(s_pi, s_base, length, self.alpha, num_generations, psi, self.objective)
        return per_group.view(-1, num_generations)[:, 0][group_id.long()]

    @torch.no_grad()
    def _initialise_log_z(self, per_token_logps, base_logps, mask, log_z, psi):
        """Shift the head so the first batch's mean residual (over all processes) is 0; return the shift."""
        residual = tb_residual(
            per_token_logps.detach(), base_logps, mask, log_z.detach(), self.alpha, psi, self.objective
        )
        valid = (mask.sum(-1) > 0).float()
        totals = self.accelerator.reduce(torch.stack([(residual * valid).sum(), valid.sum()]), reduction="sum")
        delta = -(totals[0] / totals[1].clamp(min=1.0)).item()
        self.log_z_head.shift(delta)
        return delta

    def _log_tb_metrics(self, mode, per_token_logps, base_logps, mask, log_z, stats, entropies, kl_sum, inputs, loss):
        """Gather per-sequence statistics once and log TB residual, log Z', per-token log-probs, length and ESS; in
        training also add this micro-batch to the step's sums for re-centring log Z'."""
        with torch.no_grad():
            ent, _ = sequence_stats(entropies.detach(), mask)
            per_seq = torch.stack(
                [
                    stats["residual"],
                    stats["weight"],
                    stats["valid"].float(),
                    log_z.detach().float(),
                    stats["s_pi"],
                    stats["s_base"],
                    stats["length"],
                    ent,
                    torch.zeros_like(ent) if kl_sum is None else kl_sum.float(),
                    inputs["row_index"].float(),
                    loss.detach().float().expand_as(ent),
                    stats["log_ratio"].float(),
                ],
                dim=1,
            )
            # One gather and one device-to-host copy per micro-batch; everything below runs on the CPU.
            gathered = self.accelerator.gather(per_seq).float().cpu()
            res, weight, valid, log_z, s_pi, s_base, length, ent, kl, row, losses, log_ratio = gathered.unbind(1)
            valid = valid.bool()
            ratio = torch.exp(log_ratio - log_ratio[valid].max()) if valid.any() else log_ratio  # scale-free for ESS
            self._check_training_health(mode, losses, res[valid], log_z[valid], ratio, valid)
            if self.log_completions:  # w, log Z' and residual of each row, as first trained, for the table
                row, table = row.long(), self._table_stats
                first = torch.isnan(table[row, 0]) & valid
                table[row[first]] = torch.stack([weight, log_z, res], dim=1)[first]
            metrics = self._metrics[mode]
            tokens = length.sum().clamp(min=1.0)
            # completions with no tokens left (e.g. masked truncations) are not in the loss: say how many
            metrics["powerflow/frac_no_tokens"].append(1.0 - valid.float().mean().item())
            metrics["powerflow/ess"].append(effective_sample_size(weight, valid).item())
            metrics["powerflow/ess_unclipped"].append(effective_sample_size(ratio, valid).item())
            if valid.any():
                r, w = res[valid], weight[valid]
                metrics["powerflow/residual_mean"].append(r.mean().item())
                metrics["powerflow/residual_std"].append(r.std(unbiased=False).item())
                metrics["powerflow/residual_abs_mean"].append(r.abs().mean().item())
                metrics["powerflow/log_z_mean"].append(log_z[valid].mean().item())
                metrics["powerflow/completion_length"].append(length[valid].mean().item())
                clipped = (w <= 1 - self.epsilon_low + 1e-6) | (w >= 1 + self.epsilon_high - 1e-6)
                metrics["powerflow/weight_mean"].append(w.mean().item())
                metrics["powerflow/weight_clip_ratio"].append(clipped.float().mean().item())
            metrics["powerflow/policy_logp_per_token"].append((s_pi.sum() / tokens).item())
            metrics["powerflow/base_logp_per_token"].append((s_base.sum() / tokens).item())
            metrics["entropy"].append((ent.sum() / tokens).item())
            if kl_sum is not None:  # beta > 0: token-weighted mean k3 KL to the base model, as GRPO logs it
                metrics["kl"].append((kl.sum() / tokens).item())

    def _check_training_health(self, mode, losses, residual, log_z, ratio, valid):
        """Stop before a backward on a non-finite loss, residual or log Z' (every process sees the same gathered
        values, so all stop together); warn, with the numbers, on a large residual or a collapsed ESS."""
        step = self.state.global_step + 1 if mode == "train" else self.state.global_step
        bad = {
            name: int((~torch.isfinite(values)).sum())
            for name, values in (("loss", losses), ("TB residual", residual), ("log Z'", log_z))
        }
        bad = {name: count for name, count in bad.items() if count}
        if bad:
            checkpoint = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
            counts = ", ".join(f"{name}: {count} value(s)" for name, count in bad.items())
            raise FloatingPointError(
                f"Non-finite values at {mode} step {step} ({counts}); "
                "training stopped before this update. Likely causes: a learning rate (or log_z_learning_rate) too "
                "large, fp16 overflow (use bf16 or fp32), a reward function returning inf/NaN (psi), or log-probs of "
                "-inf from a sampler that produced tokens the model gives zero probability. Last good checkpoint: "
                f"{checkpoint or 'none saved yet'}."
            )
        if residual.numel() and residual.abs().mean() > LARGE_RESIDUAL:
            logger.warning(
                f"{mode} step {step}: mean |TB residual| = {residual.abs().mean():.3g} (> {LARGE_RESIDUAL}), max "
                f"{residual.abs().max():.3g}: the policy is far from p_base^alpha on these completions (check alpha, "
                "the learning rates and psi)."
            )
        ess, n = effective_sample_size(ratio, valid), int(valid.sum())
        threshold = max(LOW_ESS, 2.0 / max(n, 1))  # below 10% of the completions, or fewer than 2 effective ones
        if n > 1 and ess < threshold:
            logger.warning(
                f"{mode} step {step}: effective sample size of the unclipped pi/pi_old = {ess:.3g} (< {threshold:.3g})"
                f" over {n} completions: the generations are reused far off-policy and w is clipped for "
                "most of them (lower num_iterations / steps_per_generation or the learning rate, or use "
                "tb_weight_level='sequence_mean')."
            )

    def log(self, logs, start_time=None):
        # Override: the completions table shows each completion's w, log Z' and TB residual instead of GRPO's
        # `advantage` column (always 0: PowerFlow has no advantages).
        log_completions, self.log_completions = self.log_completions, False
        try:
            super().log(logs, start_time)
        finally:
            self.log_completions = log_completions
        if log_completions and self.accelerator.is_main_process and self._logs["prompt"]:
            write_completions_table(self)

    @torch.no_grad()
    def _recentre_log_z(self):
        """After the optimizer step: shift log Z' by c = -sum w (r + h_new - h_old) / sum w over the step's completions
        (all processes), r the residuals the step was computed with, h_new - h_old the head's own move on their
        prompt features (h_new without dropout). c = argmin_c sum_y w (r' + c)^2 for the new head: the exact minimiser
        over the constant of log Z', so log Z' neither lags the policy nor overshoots by the head's own step."""
        batch, self._recentre_batch = self._recentre_batch, []
        sums = torch.zeros(2, dtype=torch.float64, device=self.log_z_head.out.weight.device)
        training = self.log_z_head.training
        self.log_z_head.eval()
        for features, weight, residual, old in batch:
            moved = residual + (self.log_z_head(features) - old.detach())  # residual under the new head
            sums += torch.stack([(weight * moved).sum(), weight.sum()]).to(sums)
        self.log_z_head.train(training)
        sums = self.accelerator.reduce(sums, reduction="sum")
        if sums[1] > 0:
            self.log_z_head.shift(-(sums[0] / sums[1]).item())

    @torch.no_grad()
    def _per_token_logps(self, batch, base: bool):
        """Temperature-1 per-token log-probs of the completions under p_base (`base=True`) or the current policy."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        kwargs = {k: batch[k] for k in _FORWARD_KEYS if k in batch}
        logits_to_keep = batch["completion_ids"].size(1)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if not base:
                return self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, **kwargs
                )[0]
            if self.ref_model is not None:
                return self._get_per_token_logps_and_entropies(
                    self.ref_model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, **kwargs
                )[0]
            unwrapped = self.accelerator.unwrap_model(self.model)
            with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                return self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size, **kwargs
                )[0]

    # ------------------------------------------------------------------------------------------------- checkpointing
    def _save(self, output_dir=None, state_dict=None):
        # Override: the head is not part of the language model; save it beside the weights, not inside them.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.log_z_head is not None:
            if state_dict is None:
                state_dict = self.accelerator.unwrap_model(self.model).state_dict()
            state_dict, head_state = split_log_z_state_dict(state_dict)
            if head_state and self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                head_state = {k: v.detach().cpu().contiguous() for k, v in head_state.items()}
                save_file(head_state, os.path.join(output_dir, LOG_Z_HEAD_FILE))
        super()._save(output_dir, state_dict=state_dict)

    def save_model(self, output_dir=None, _internal_call=False):
        # Override: when no full state dict reaches `_save` (ZeRO-3 without 16-bit gathering, FSDP sharded state
        # dicts), gather the head by itself so every checkpoint holds it whole.
        super().save_model(output_dir, _internal_call)
        if self.log_z_head is None:
            return
        if self.is_deepspeed_enabled:
            zero = self.accelerator.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
            if zero.get("stage") != 3 or zero.get("stage3_gather_16bit_weights_on_model_save", False) is True:
                return
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.log_z_head.parameters())):  # collective: every rank
                head_state = {k: v.detach().cpu().clone() for k, v in self.log_z_head.state_dict().items()}
        elif self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type):
            head_state = full_head_state(self.log_z_head)  # collective: every rank
        else:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_file(head_state, os.path.join(output_dir, LOG_Z_HEAD_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Override: restore the head saved by `_save` (DeepSpeed checkpoints restore it with the engine instead).
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        path = os.path.join(resume_from_checkpoint, LOG_Z_HEAD_FILE)
        if self.log_z_head is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Checkpoint {resume_from_checkpoint} has no {LOG_Z_HEAD_FILE}: it was not written by a "
                    "PowerFlowTrainer with a learned log-partition head."
                )
            load_full_head_state(self.log_z_head, load_file(path, device="cpu"))  # sharded by FSDP or not


# Sampler options that cut the support of the sampling distribution: TB never sees the completions they exclude.
_SUPPORT_CUTTING = {
    "top_k": lambda v: v is not None and v > 0,
    "top_p": lambda v: v is not None and v < 1.0,
    "min_p": lambda v: v is not None and v > 0.0,
    "typical_p": lambda v: v is not None and v < 1.0,
    "epsilon_cutoff": lambda v: v is not None and v > 0.0,
    "eta_cutoff": lambda v: v is not None and v > 0.0,
    "no_repeat_ngram_size": lambda v: v is not None and v > 0,
}


def _warn_undetermined_target(args):
    """Warn once, at construction, about options that leave part of the LA-TB fixed point undetermined."""
    if args.mask_truncated_completions:
        warnings.warn(
            "`mask_truncated_completions=True`: truncated completions get no residual, so the target constrains only "
            "completions that end before `max_completion_length`; the mass the policy puts on truncated ones is left "
            "free (it is not matched to p_base^alpha). Leave it False to count a truncation as a terminal state.",
            UserWarning,
            stacklevel=3,
        )
    options = {name: getattr(args, name, None) for name in ("top_k", "top_p", "min_p")}
    options.update({k: v for k, v in (args.generation_kwargs or {}).items() if k in _SUPPORT_CUTTING})
    cut = [f"{name}={value}" for name, value in options.items() if _SUPPORT_CUTTING[name](value)]
    if cut:
        warnings.warn(
            f"{', '.join(cut)} cut(s) the sampler's support: completions outside it are never sampled, so their "
            "probability under the policy is never trained towards p_base^alpha (trajectory balance is off-policy "
            "only for samplers with full support). The fixed point holds on the support the sampler keeps.",
            UserWarning,
            stacklevel=3,
        )


class _RecentreLogZ(TrainerCallback):
    """Re-centre log Z' right after each optimizer step (before any checkpoint of that step is saved)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._recentre_log_z()


def write_completions_table(trainer):
    """GRPO's completions table (parquet file, console sample, wandb/trackio) with PowerFlow's columns."""
    import pandas as pd
    from transformers.utils import is_rich_available
    from trl.trainer.utils import print_prompt_completions_sample, strip_images_from_messages

    logs, step = trainer._logs, trainer.state.global_step
    stats = getattr(trainer, "_table_stats", None)
    n = len(logs["prompt"])
    if stats is None or stats.size(0) != n:  # rows from another batch (e.g. eval): no TB values for them
        stats = torch.full((n, 3), float("nan"))
    columns = {"w": stats[:, 0].tolist(), "log_z": stats[:, 1].tolist(), "residual": stats[:, 2].tolist()}
    extra = {**logs["extra"], **columns}
    if is_rich_available():
        print_prompt_completions_sample(
            logs["prompt"], logs["completion"], logs["rewards"], None, step, trainer.num_completions_to_print, extra
        )
    table = pd.DataFrame(
        {
            "step": [step] * n,
            "prompt": [strip_images_from_messages(m) for m in logs["prompt"]],
            "completion": [strip_images_from_messages(m) for m in logs["completion"]],
            **{name: list(values) for name, values in logs["rewards"].items()},
            **{name: list(values) for name, values in extra.items()},
        }
    )
    os.makedirs(os.path.join(trainer.args.output_dir, "completions"), exist_ok=True)
    table.to_parquet(os.path.join(trainer.args.output_dir, "completions", f"completions_{step:05d}.parquet"))
    report_to = trainer.args.report_to or []
    if trainer.log_unique_prompts:
        table = table[~table["prompt"].astype(str).duplicated()]
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({"completions": wandb.Table(dataframe=table)})
    if "trackio" in report_to:
        import trackio

        trackio.log({"completions": trackio.Table(dataframe=table)})


def _add_ref_adapter(model):
    """Copy the pretrained 'default' adapter into a frozen 'ref' adapter, as GRPOTrainer does for beta != 0."""
    if "ref" in model.peft_config:
        return
    model.add_adapter("ref", model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            model.get_parameter(name.replace(".default.", ".ref.")).data.copy_(param.data)
