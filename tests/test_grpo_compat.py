"""Drop-in claim, option by option: every GRPOConfig option either keeps its GRPO meaning under PowerFlow or is
rejected with a reason; every GRPOTrainer constructor argument is accepted."""

import dataclasses
import os

import pytest
import torch
from datasets import Dataset, IterableDataset
from helpers import logged, powerflow_args
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments
from trl import GRPOConfig

from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
from trl_powerflow.toys.tiny_models import tiny_prompt_dataset
from trl_powerflow.training.grpo_options import GRPO_OPTIONS_KEPT, GRPO_OPTIONS_REJECTED

GRPO_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)} - {
    f.name for f in dataclasses.fields(TrainingArguments)
}

NON_DEFAULT = {
    "loss_type": "grpo",
    "scale_rewards": "batch",
    "multi_objective_aggregation": "normalize_then_sum",
    "importance_sampling_level": "sequence",
    "delta": 1.5,
    "sapo_temperature_neg": 2.0,
    "sapo_temperature_pos": 2.0,
    "vespo_k_pos": 1.0,
    "vespo_lambda_pos": 1.0,
    "vespo_k_neg": 1.0,
    "vespo_lambda_neg": 1.0,
    "off_policy_mask_threshold": 0.5,
    "top_entropy_quantile": 0.5,
    "entropy_coef": 0.01,
    "use_adaptive_entropy": True,
    "sync_ref_model": True,
}


def test_every_grpo_option_is_classified_once():
    assert set(GRPO_OPTIONS_KEPT) | set(GRPO_OPTIONS_REJECTED) == GRPO_FIELDS
    assert not set(GRPO_OPTIONS_KEPT) & set(GRPO_OPTIONS_REJECTED)
    assert set(NON_DEFAULT) == set(GRPO_OPTIONS_REJECTED)


@pytest.mark.parametrize("name", sorted(GRPO_OPTIONS_REJECTED))
def test_rejected_options_raise_with_reason(name):
    with pytest.raises(ValueError, match=f"`{name}=.*does not apply to PowerFlow"):
        PowerFlowConfig(output_dir="/tmp/pf-compat", bf16=False, report_to=[], **{name: NON_DEFAULT[name]})


def args_for(tmp_path, **kwargs):
    return powerflow_args(tmp_path, **{"gradient_checkpointing": False, **kwargs})


KEPT_RUNS = {
    "beta": dict(beta=0.1),
    "beta_no_bias_correction": dict(beta=0.1, use_bias_correction_kl=False, num_iterations=2),
    "mask_truncated_completions": dict(mask_truncated_completions=True, max_completion_length=2),
    "sampling": dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.01, repetition_penalty=1.1),
    "generation_kwargs": dict(generation_kwargs={"max_new_tokens": 4}),
    "steps_per_generation": dict(per_device_train_batch_size=2, steps_per_generation=2),
    "epsilon_high": dict(num_iterations=2, epsilon=0.1, epsilon_high=0.3, tb_weight_level="sequence_mean"),
    "cast_lm_head_to_fp32": dict(cast_lm_head_to_fp32=True),
    "pad_to_multiple_of": dict(pad_to_multiple_of=8),
    "shuffle_dataset": dict(shuffle_dataset=False),
    "disable_dropout": dict(disable_dropout=True),
    "log_completions": dict(log_completions=True, num_completions_to_print=2),
    "model_init_kwargs": dict(model_init_kwargs={"dtype": "float32"}),
    "gradient_checkpointing": dict(gradient_checkpointing=True),
    "eval": dict(eval_strategy="steps", eval_steps=2, num_generations_eval=2, per_device_eval_batch_size=2),
}


@pytest.mark.parametrize("case", sorted(KEPT_RUNS))
def test_kept_options_train(tiny_model_dir, tmp_path, case):
    args = args_for(tmp_path, **KEPT_RUNS[case])
    eval_dataset = tiny_prompt_dataset(n=4, seed=1) if case == "eval" else None
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset(n=8), eval_dataset=eval_dataset
    )
    trainer.train()
    assert trainer.state.global_step == 2
    losses = logged(trainer, "loss")
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    if case.startswith("beta"):
        assert logged(trainer, "kl")
    if case == "mask_truncated_completions":
        # with max_completion_length=2 most completions are truncated and masked: fewer tokens in the loss; the
        # logged length averages only the completions that kept tokens
        lengths = logged(trainer, "powerflow/completion_length")
        assert all(0 < length <= 2.0 for length in lengths)
        assert max(logged(trainer, "powerflow/frac_no_tokens")) > 0.0
    if case == "log_completions":
        assert os.listdir(os.path.join(args.output_dir, "completions"))
    if case == "eval":
        assert logged(trainer, "eval_loss") and logged(trainer, "eval_powerflow/residual_mean")
    if case == "generation_kwargs":
        assert max(logged(trainer, "completions/max_length")) <= 4


def test_constructor_arguments(tiny_model_dir, tmp_path):
    """processing_class, reward model by path, reward_processing_classes, callbacks, eval dict, iterable dataset."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reward_dir = str(tmp_path / "reward-model")
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)

    class Count(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            Count.steps += 1

    rows = tiny_prompt_dataset(n=8).to_list()
    train = IterableDataset.from_generator(lambda: iter(rows))
    evals = {"a": tiny_prompt_dataset(n=4, seed=1), "b": tiny_prompt_dataset(n=4, seed=2)}
    args = args_for(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    trainer = PowerFlowTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        reward_funcs=[reward_dir],
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        reward_processing_classes=[AutoTokenizer.from_pretrained(reward_dir)],
        callbacks=[Count()],
    )
    trainer.train()
    assert Count.steps == 2
    assert logged(trainer, "eval_a_loss") and logged(trainer, "eval_b_loss")
    assert logged(trainer, "rewards/reward-model/mean")


def test_peft_model_instance_with_pretrained_adapter_uses_it_as_base(tiny_model_dir, tmp_path):
    """A PeftModel passed in (pretrained adapter) starts from base + adapter: that is p_base, kept in a frozen copy."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),  # non-zero: changes outputs
    )
    trainer = PowerFlowTrainer(model=model, args=args_for(tmp_path), train_dataset=tiny_prompt_dataset(n=8))
    assert "ref" in trainer.model.peft_config
    trainer.train()
    ref = {n: p for n, p in trainer.model.named_parameters() if ".ref." in n}
    assert ref and not any(p.requires_grad for p in ref.values())
    assert logged(trainer, "powerflow/residual_mean")


def test_grpo_config_type_error_message(tiny_model_dir, tmp_path):
    with pytest.raises(TypeError, match="Replace `GRPOConfig"):
        PowerFlowTrainer(
            model=tiny_model_dir,
            args=GRPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[]),
            train_dataset=Dataset.from_dict({"prompt": ["hi"]}),
        )
