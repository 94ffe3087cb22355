"""TRL's own GRPOTrainer tests, re-run with the two classes swapped (`GRPOTrainer` -> `PowerFlowTrainer`,
`GRPOConfig` -> `PowerFlowConfig`): the drop-in promise is that a GRPO pipeline keeps working unchanged.

Reference: `tests/test_grpo_trainer.py` of huggingface/trl (1.16 era). Everything runs offline on CPU: the Hub's tiny
test models and the "zen" dataset are replaced by models built in code (`trl_powerflow.toys.tiny_models`: tiny Qwen2 /
Llama decoders, Qwen2 / Llama sequence-classification reward models, Qwen3-MoE and GPT-OSS MoE models) and small
prompt datasets. Each test mirrors the checks TRL makes (training loss logged, every trainable parameter changed,
PEFT base weights frozen, metric keys present, errors raised) with 1-2 optimizer steps.

Mirrored (TRL test -> test here):
    test_init_minimal, test_training[standard|conversational], test_training_with_eval,
    test_training_with_num_generations_eval, test_training_eval_on_start (without `loss_type`),
    test_training_multiple_iterations, test_training_peft_config, test_training_peft_model,
    test_training_peft_with_gradient_checkpointing, test_training_different_reward_model,
    test_training_reward_func_standard, test_training_reward_func_conversational, test_training_multiple_reward_funcs,
    test_training_sync_and_async_reward_funcs, test_training_multiple_reward_funcs_with_None_output,
    test_training_multiple_reward_funcs_with_weights, test_training_multiple_mixed_reward_funcs,
    test_training_reward_func_additional_column, test_training_beta_non_zero, test_training_with_bias_correction_kl,
    test_training_with_cast_lm_head_to_fp32[untied|tied], test_training_with_additional_generation_kwargs,
    test_training_with_mask_truncated_completions, test_training_with_mask_truncated_completions_all_masked,
    test_warning_raised_all_rewards_none, test_training_num_generations_larger_than_batch_size,
    test_training_multiple_dataloader_workers, test_training_with_generation_kwargs,
    test_training_with_reward_func_accessing_trainer_state, test_prepare_input_called_with_correct_data,
    test_training_with_chat_template_kwargs, test_training_with_tools[sync|async],
    test_mismatched_reward_processing_classes_length, test_correct_reward_processing_classes_list,
    test_single_reward_model_with_single_processing_class.
Deviations, each forced by running offline on CPU: test_init_minimal compares with GRPOTrainer on the same inputs
(the default config asks for bf16, which TrainingArguments refuses without a bf16 GPU, for GRPO too); the all-masked
truncation test suppresses EOS instead of relying on a random model not emitting it; the cast_lm_head_to_fp32 test
loads the model in bfloat16 (as TRL's Hub models are stored) so that the cast is visible; the tools test uses TRL's
packaged Qwen3 chat template on the tiny tokenizer, a 2k-context Qwen3-MoE and max_completion_length=256 (the tiny
byte-level tokenizer needs more tokens than Qwen's for the same tool call and tool error).
Also checked (GRPOTrainer 1.16 behaviours that the stored copy of TRL's test file does not exercise): MoE training on
tiny Qwen3-MoE and GPT-OSS models (parameters change, `aux_loss` / `eval_aux_loss` logged) and `router_aux_loss_coef`
with GRPO's meaning (unset: the model config's coefficient; 0.0: off; a value overrides it; `loss += coef *
aux_loss`, with and without gradient accumulation; set on a dense model: ValueError), a dict of eval datasets, an
IterableDataset train set, `log_completions` / `num_completions_to_print` (console table and parquet files),
`steps_per_generation`, `max_completion_length` truncation metrics, a model instance instead of a path, and the GRPO
metric keys that do not depend on advantages (num_tokens, completions/*, rewards/*, reward, reward_std, entropy, kl).

Out of scope (PowerFlowConfig refuses these GRPO advantage/surrogate options with a ValueError, tested in
test_grpo_compat.py): TestGetHighEntropyMask and test_training_with_entropy_filter (top_entropy_quantile),
test_get_sapo_token_loss and test_training_loss_types (loss_type / SAPO), test_training_scale_rewards,
test_training_normalize_then_sum_aggregation (multi_objective_aggregation: reward normalisation into advantages),
test_training_sequence_importance_sampling (importance_sampling_level), test_training_delta_clipping (delta),
test_get_off_policy_mask*, test_training_with_off_policy_mask* (off_policy_mask_threshold),
test_training_with_sync_ref_model (sync_ref_model).
Not mirrored, because they cannot run offline on this CPU-only set-up: the vLLM tests (vLLM server/colocate, GPU),
the Liger-kernel tests (liger-kernel not installed, GPU), test_training_with_transformers_paged (GPU only in TRL),
test_vlm_training and test_vlm_processor_vllm_colocate_mode (bitsandbytes, flash-attention, vLLM, GPU).
Not applicable to TRL 1.16: test_tool_completion_idx_injection (the `_completion_idx` tool argument is newer than
GRPOTrainer 1.16, which has no `_tools_accept_completion_idx`).
Vision-language (test_training_vlm, _beta_non_zero, _and_importance_sampling, _multi_image, _peft) is mirrored on a
tiny LLaVA built offline (the `pixel_values` path). TRL's Qwen2-VL / Qwen2.5-VL variants (the `image_grid_thw` path)
are not: their processors cannot be built here without torchvision, which is not installed; Gemma3 and LLaVA-Next
are not built either. test_training_vlm_and_liger and test_training_vlm_and_vllm are out for the Liger / vLLM
reasons above.
"""

import os
import re
from unittest.mock import patch

import pandas as pd
import pytest
import torch
from datasets import Dataset, IterableDataset
from helpers import logged, powerflow_args
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
from trl_powerflow.toys.tiny_models import (
    build_tiny_tokenizer,
    save_tiny_model,
    save_tiny_moe_model,
    save_tiny_reward_model,
    save_tiny_vlm,
    tiny_image_prompt_dataset,
    tiny_prompt_dataset,
)

# A template unlike the policy's ChatML one, for a reward model that formats conversations its own way.
OTHER_CHAT_TEMPLATE = (
    "{% for message in messages %}### {{ message['role'] | upper }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### ASSISTANT: {% endif %}"
)


# ------------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("parity-models")


@pytest.fixture(scope="module")
def reward_model_dir(models_root):
    return save_tiny_reward_model(models_root / "reward-qwen2")


@pytest.fixture(scope="module")
def reward_model_dir_2(models_root):
    return save_tiny_reward_model(models_root / "reward-qwen2-b", seed=1)


@pytest.fixture(scope="module")
def other_reward_model_dir(models_root):
    return save_tiny_reward_model(models_root / "reward-llama", arch="llama", chat_template=OTHER_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def untied_model_dir(models_root):
    return save_tiny_model(models_root / "qwen2-untied", tie_word_embeddings=False)


@pytest.fixture(scope="module")
def moe_model_dirs(models_root):
    return {arch: save_tiny_moe_model(models_root / arch, arch=arch) for arch in ("qwen3_moe", "gpt_oss")}


@pytest.fixture(scope="module")
def vlm_dir(models_root):
    return save_tiny_vlm(models_root / "llava")


@pytest.fixture(scope="module")
def long_context_moe_model_dir(models_root):
    """Qwen3-MoE with room for the Qwen3 tool-calling system prompt, ~600 tokens with the tiny tokenizer (GRPO ends
    the tool loop for sequences reaching `max_position_embeddings`)."""
    return save_tiny_moe_model(models_root / "qwen3_moe-2k", arch="qwen3_moe", max_position_embeddings=2048)


def standard_dataset(n=8, seed=0):
    return tiny_prompt_dataset(n=n, conversational=False, seed=seed).remove_columns("answer")


def conversational_dataset(n=8, seed=0):
    return tiny_prompt_dataset(n=n, conversational=True, seed=seed).remove_columns("answer")


def args_for(tmp_path, **kwargs) -> PowerFlowConfig:
    return powerflow_args(tmp_path / "out", **kwargs)


def snapshot(trainer, trainable_only=False):
    return {
        n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad or not trainable_only
    }


def assert_all_changed(trainer, before):
    unchanged = [n for n, p in before.items() if torch.equal(p, trainer.model.get_parameter(n))]
    assert not unchanged, f"Parameters that have not changed: {unchanged}"


def assert_trained(trainer, before):
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert_all_changed(trainer, before)


def train_and_check(trainer, trainable_only=False):
    before = snapshot(trainer, trainable_only)
    trainer.train()
    assert_trained(trainer, before)
    return trainer


def length_reward(completions, **kwargs):
    """Rewards longer completions (standard format)."""
    return [float(len(c)) for c in completions]


def unique_letters_reward(completions, **kwargs):
    """Rewards completions with more distinct characters (standard format)."""
    return [float(len(set(c))) for c in completions]


def assert_peft_trained(trainer, before, base_param_names, skip=("base_layer",)):
    assert trainer.state.log_history[-1]["train_loss"] is not None
    for n, old in before.items():
        new = trainer.model.get_parameter(n)
        if n in base_param_names:
            assert torch.allclose(old, new), f"Base parameter {n} has changed."
        elif not any(s in n for s in skip):
            assert not torch.allclose(old, new), f"Parameter {n} has not changed."


# ------------------------------------------------------------------------------------------- construction / datasets
def test_init_minimal(tiny_model_dir, reward_model_dir, tmp_path, monkeypatch):
    """Only model, reward_funcs and train_dataset: the default config is built from the model name.

    The default config asks for bf16 (GRPOConfig's default), which TrainingArguments refuses on a machine without a
    bf16 GPU; PowerFlowConfig turns that default off there instead (with a notice). GRPOTrainer is run alongside so
    that any other outcome is "behaves as GRPOTrainer does here" on any machine.
    """
    from trl import GRPOTrainer

    monkeypatch.chdir(tmp_path)
    kwargs = dict(model=tiny_model_dir, reward_funcs=reward_model_dir, train_dataset=standard_dataset())
    try:
        GRPOTrainer(**kwargs)
    except ValueError as grpo_error:
        if "bf16" not in str(grpo_error):
            with pytest.raises(type(grpo_error), match=re.escape(str(grpo_error))):
                PowerFlowTrainer(**kwargs)
        else:  # PowerFlow turns a default bf16 off without a GPU, with a notice (issue: CPU users' scripts)
            assert PowerFlowTrainer(**kwargs).args.bf16 is False
    else:
        trainer = PowerFlowTrainer(**kwargs)
        assert isinstance(trainer.args, PowerFlowConfig)
        assert trainer.args.output_dir.endswith(f"{os.path.basename(tiny_model_dir)}-PowerFlow")


@pytest.mark.parametrize("config_name", ["standard_prompt_only", "conversational_prompt_only"])
def test_training(tiny_model_dir, reward_model_dir, tmp_path, config_name):
    dataset = standard_dataset() if config_name == "standard_prompt_only" else conversational_dataset()
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=reward_model_dir, args=args_for(tmp_path), train_dataset=dataset
    )
    train_and_check(trainer)


def test_training_model_instance(tiny_model_dir, tmp_path):
    """A model instance instead of a path."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    trainer = PowerFlowTrainer(
        model=model, reward_funcs=length_reward, args=args_for(tmp_path), train_dataset=standard_dataset()
    )
    assert trainer.model is model
    train_and_check(trainer)


def test_training_iterable_dataset(tiny_model_dir, tmp_path):
    rows = standard_dataset().to_list()
    dataset = IterableDataset.from_generator(lambda: iter(rows))
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=length_reward, args=args_for(tmp_path), train_dataset=dataset
    )
    train_and_check(trainer)
    assert trainer.state.global_step == 2


def test_grpo_metric_keys_are_logged(tiny_model_dir, tmp_path):
    """The GRPO metrics that do not depend on advantages keep their names, on every logging step."""
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=length_reward, args=args_for(tmp_path), train_dataset=standard_dataset()
    )
    trainer.train()
    keys = (
        "loss",
        "num_tokens",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "completions/mean_terminated_length",
        "rewards/length_reward/mean",
        "rewards/length_reward/std",
        "reward",
        "reward_std",
        "entropy",
    )
    for key in keys:
        assert len(logged(trainer, key)) == 2, key


def test_max_completion_length_truncates(tiny_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=length_reward,
        args=args_for(tmp_path, max_completion_length=3),
        train_dataset=standard_dataset(),
    )
    trainer.train()
    assert max(logged(trainer, "completions/max_length")) <= 3
    # a random tiny model rarely emits EOS within 3 tokens: (almost) every completion is clipped
    assert max(logged(trainer, "completions/clipped_ratio")) > 0


# -------------------------------------------------------------------------------------------------------- evaluation
def test_training_with_eval(tiny_model_dir, reward_model_dir, tmp_path):
    args = args_for(tmp_path, per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=2)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        args=args,
        train_dataset=standard_dataset(),
        eval_dataset=standard_dataset(n=4, seed=1),
    )
    trainer.train()
    assert logged(trainer, "eval_loss")


def test_training_with_num_generations_eval(tiny_model_dir, reward_model_dir, tmp_path):
    args = args_for(
        tmp_path, per_device_eval_batch_size=4, num_generations_eval=1, eval_strategy="steps", eval_steps=2
    )
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        args=args,
        train_dataset=standard_dataset(),
        eval_dataset=standard_dataset(n=4, seed=1),
    )
    trainer.train()
    assert logged(trainer, "eval_loss")


def test_training_eval_on_start(tiny_model_dir, reward_model_dir, tmp_path):
    """Evaluation before the first optimizer step (GRPO had a crash there)."""
    args = args_for(tmp_path, per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=2, eval_on_start=True)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        args=args,
        train_dataset=standard_dataset(),
        eval_dataset=standard_dataset(n=4, seed=1),
    )
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, before)
    eval_steps = [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert eval_steps[0] == 0 and len(eval_steps) == 2


def test_training_with_eval_dataset_dict(tiny_model_dir, tmp_path):
    args = args_for(tmp_path, per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=2)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=length_reward,
        args=args,
        train_dataset=standard_dataset(),
        eval_dataset={"a": standard_dataset(n=4, seed=1), "b": conversational_dataset(n=4, seed=2)},
    )
    trainer.train()
    assert logged(trainer, "eval_a_loss") and logged(trainer, "eval_b_loss")


# ----------------------------------------------------------------------------------------------- training variants
def test_training_multiple_iterations(tiny_model_dir, reward_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        args=args_for(tmp_path, num_iterations=2),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)


def test_training_steps_per_generation(tiny_model_dir, tmp_path):
    """Three steps, not GRPO's two: each step holds two completions of one prompt, whose mean residual the head's
    first-batch shift (and each re-centring) sets to 0, so the zero-initialised output layer gets no gradient at step
    1 and the head's body none until step 3 (with two steps the body stays put; seen)."""
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=length_reward,
        args=args_for(tmp_path, per_device_train_batch_size=2, steps_per_generation=2, max_steps=3),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)


def test_training_beta_non_zero(tiny_model_dir, reward_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        args=args_for(tmp_path, beta=0.1),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)
    assert logged(trainer, "kl")


def test_training_with_bias_correction_kl(tiny_model_dir, reward_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        args=args_for(tmp_path, beta=0.1, use_bias_correction_kl=True),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_training_with_cast_lm_head_to_fp32(tiny_model_dir, untied_model_dir, reward_model_dir, tmp_path, tied):
    """A bfloat16 model whose LM head is cast to float32 (TRL: tiny Qwen3, untied, and Gemma2, tied)."""
    args = args_for(tmp_path, cast_lm_head_to_fp32=True, model_init_kwargs={"dtype": "bfloat16"}, learning_rate=0.1)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir if tied else untied_model_dir,
        reward_funcs=reward_model_dir,
        args=args,
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)
    assert trainer.model.lm_head.weight.dtype == torch.float32


def test_training_num_generations_larger_than_batch_size(tiny_model_dir, reward_model_dir, tmp_path):
    args = args_for(tmp_path, per_device_train_batch_size=3, num_generations=6, gradient_accumulation_steps=2)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=reward_model_dir, args=args, train_dataset=standard_dataset()
    )
    train_and_check(trainer)


def test_training_multiple_dataloader_workers(tiny_model_dir, reward_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        args=args_for(tmp_path, dataloader_num_workers=2),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)


def test_prepare_input_called_with_correct_data(tiny_model_dir, reward_model_dir, tmp_path):
    """Generation batches are built from consecutive prompts, each repeated num_generations times, and reused for
    steps_per_generation * num_iterations training steps."""
    prompts = [f"Prompt number {i} is here" for i in range(12)]
    dataset = Dataset.from_dict({"prompt": prompts})
    args = args_for(
        tmp_path,
        max_steps=-1,
        num_train_epochs=1,
        gradient_accumulation_steps=3,
        steps_per_generation=4,  # 4 * 6 = 24 completions per generation = 6 prompts x 4 generations
        num_generations=4,
        per_device_train_batch_size=6,
        num_iterations=2,
        shuffle_dataset=False,
    )
    trainer = PowerFlowTrainer(model=tiny_model_dir, reward_funcs=reward_model_dir, args=args, train_dataset=dataset)
    expected_first = [{"prompt": p} for p in prompts[:6] for _ in range(4)]
    expected_second = [{"prompt": p} for p in prompts[6:] for _ in range(4)]
    with patch.object(PowerFlowTrainer, "training_step", wraps=trainer.training_step) as mock_step:
        trainer.train()
    # 1 epoch * 2 generation batches * 2 iterations * 4 steps per generation
    assert mock_step.call_count == 16
    for i in range(8):
        assert mock_step.call_args_list[i].args[1] == expected_first
    for i in range(8, 16):
        assert mock_step.call_args_list[i].args[1] == expected_second


# ------------------------------------------------------------------------------------------------------------- PEFT
def test_training_peft_config(tiny_model_dir, reward_model_dir, tmp_path):
    from peft import LoraConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    base_param_names = [f"base_model.model.{n}" for n, _ in model.named_parameters()]
    trainer = PowerFlowTrainer(
        model=model,
        reward_funcs=reward_model_dir,
        args=args_for(tmp_path, learning_rate=0.1),
        train_dataset=standard_dataset(),
        peft_config=LoraConfig(),
    )
    before = snapshot(trainer)
    trainer.train()
    assert_peft_trained(trainer, before, base_param_names)


def test_training_peft_model(tiny_model_dir, reward_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    base_param_names = [f"base_model.model.{n}" for n, _ in model.named_parameters()]
    model = get_peft_model(model, LoraConfig())
    trainer = PowerFlowTrainer(
        model=model,
        reward_funcs=reward_model_dir,
        args=args_for(tmp_path, learning_rate=0.1),
        train_dataset=standard_dataset(),
    )
    before = snapshot(trainer)
    trainer.train()
    assert_peft_trained(trainer, before, base_param_names, skip=("base_layer", "ref"))


def test_training_peft_with_gradient_checkpointing(tiny_model_dir, reward_model_dir, tmp_path):
    from peft import LoraConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    base_param_names = [f"base_model.model.{n}" for n, _ in model.named_parameters()]
    trainer = PowerFlowTrainer(
        model=model,
        reward_funcs=reward_model_dir,
        args=args_for(tmp_path, learning_rate=0.1, gradient_checkpointing=True),
        train_dataset=standard_dataset(),
        peft_config=LoraConfig(),
    )
    before = snapshot(trainer)
    trainer.train()
    assert_peft_trained(trainer, before, base_param_names)


# --------------------------------------------------------------------------------------------------- reward sources
def test_training_different_reward_model(tiny_model_dir, other_reward_model_dir, tmp_path):
    """A reward model of another architecture with its own tokenizer and chat template, passed as an instance."""
    reward_model = AutoModelForSequenceClassification.from_pretrained(other_reward_model_dir)
    reward_tokenizer = AutoTokenizer.from_pretrained(other_reward_model_dir)
    assert reward_tokenizer.chat_template == OTHER_CHAT_TEMPLATE
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model,
        args=args_for(tmp_path),
        train_dataset=conversational_dataset(),
        reward_processing_classes=reward_tokenizer,
    )
    train_and_check(trainer)
    assert logged(trainer, "rewards/reward-llama/mean")


def test_training_reward_func_standard(tiny_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=length_reward, args=args_for(tmp_path), train_dataset=standard_dataset()
    )
    train_and_check(trainer)


def test_training_reward_func_conversational(tiny_model_dir, tmp_path):
    def reward_func(completions, **kwargs):
        return [float(len(completion[0]["content"])) for completion in completions]

    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=reward_func, args=args_for(tmp_path), train_dataset=conversational_dataset()
    )
    train_and_check(trainer)


def test_training_multiple_reward_funcs(tiny_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=[length_reward, unique_letters_reward],
        args=args_for(tmp_path),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)


def test_training_sync_and_async_reward_funcs(tiny_model_dir, tmp_path):
    def constant_reward(completions, **kwargs):
        return [1 for _ in completions]

    async def async_reward(completions, **kwargs):
        return [float(len(set(c))) for c in completions]

    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=[length_reward, constant_reward, async_reward],
        args=args_for(tmp_path),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)
    assert logged(trainer, "rewards/async_reward/mean")


def test_training_multiple_reward_funcs_with_None_output(tiny_model_dir, tmp_path):
    def non_applicable_reward(completions, **kwargs):
        return [None] * len(completions)

    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=[length_reward, non_applicable_reward],
        args=args_for(tmp_path),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer, trainable_only=True)


def test_training_multiple_reward_funcs_with_weights(tiny_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=[length_reward, unique_letters_reward],
        args=args_for(tmp_path, reward_weights=[0.7, 0.3]),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)
    for key in (
        "rewards/length_reward/mean",
        "rewards/length_reward/std",
        "rewards/unique_letters_reward/mean",
        "rewards/unique_letters_reward/std",
    ):
        assert logged(trainer, key), key


def test_training_multiple_mixed_reward_funcs(tiny_model_dir, reward_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=[length_reward, reward_model_dir],
        args=args_for(tmp_path),
        train_dataset=standard_dataset(),
    )
    train_and_check(trainer)


def test_training_reward_func_additional_column(tiny_model_dir, tmp_path):
    dataset = standard_dataset()
    dataset = dataset.add_column("some_values", list(range(len(dataset))))
    seen = []

    def reward_func(completions, some_values, **kwargs):
        seen.extend(some_values)
        return [float(abs(len(c) - v)) for c, v in zip(completions, some_values, strict=True)]

    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=reward_func, args=args_for(tmp_path), train_dataset=dataset
    )
    train_and_check(trainer)
    assert seen and set(seen) <= set(range(len(dataset)))


def test_warning_raised_all_rewards_none(tiny_model_dir, tmp_path, caplog):
    def always_none_reward(completions, **kwargs):
        return [None] * len(completions)

    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=always_none_reward,
        args=args_for(tmp_path),
        train_dataset=standard_dataset(),
    )
    with caplog.at_level("WARNING", logger="trl.trainer.grpo_trainer"):
        trainer.train()
    assert "All reward functions returned None for the following kwargs:" in caplog.text


def test_training_with_reward_func_accessing_trainer_state(tiny_model_dir, tmp_path):
    steps = []

    def reward_func(completions, **kwargs):
        trainer_state = kwargs.get("trainer_state")
        assert trainer_state is not None
        steps.append(trainer_state.global_step)
        return [float(len(set(c))) for c in completions]

    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_func,
        args=args_for(tmp_path, per_device_train_batch_size=2, num_generations=2),
        train_dataset=standard_dataset(),
    )
    trainer.train()
    assert steps == [0, 1]


def test_mismatched_reward_processing_classes_length(tiny_model_dir, reward_model_dir, reward_model_dir_2, tmp_path):
    with pytest.raises(ValueError, match="must match"):
        PowerFlowTrainer(
            model=tiny_model_dir,
            reward_funcs=[reward_model_dir, reward_model_dir_2],
            reward_processing_classes=AutoTokenizer.from_pretrained(reward_model_dir),
            args=args_for(tmp_path),
            train_dataset=standard_dataset(),
        )


def test_correct_reward_processing_classes_list(tiny_model_dir, reward_model_dir, reward_model_dir_2, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=[reward_model_dir, reward_model_dir_2],
        reward_processing_classes=[
            AutoTokenizer.from_pretrained(reward_model_dir),
            AutoTokenizer.from_pretrained(reward_model_dir_2),
        ],
        args=args_for(tmp_path),
        train_dataset=standard_dataset(),
    )
    assert len(trainer.reward_processing_classes) == 2


def test_single_reward_model_with_single_processing_class(tiny_model_dir, reward_model_dir, tmp_path):
    processing_class = AutoTokenizer.from_pretrained(reward_model_dir)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_model_dir,
        reward_processing_classes=processing_class,
        args=args_for(tmp_path),
        train_dataset=standard_dataset(),
    )
    assert len(trainer.reward_processing_classes) == 1
    assert trainer.reward_processing_classes[0] == processing_class


# ------------------------------------------------------------------------------------------------------- generation
def test_training_with_additional_generation_kwargs(tiny_model_dir, reward_model_dir, tmp_path):
    args = args_for(tmp_path, top_p=0.9, top_k=10, min_p=0.01, repetition_penalty=1.1)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=reward_model_dir, args=args, train_dataset=standard_dataset()
    )
    train_and_check(trainer)


def test_training_with_generation_kwargs(tiny_model_dir, reward_model_dir, tmp_path):
    args = args_for(
        tmp_path, generation_kwargs={"do_sample": True, "top_k": 50, "num_beams": 2, "length_penalty": -0.1}
    )
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=reward_model_dir, args=args, train_dataset=standard_dataset()
    )
    train_and_check(trainer)


def test_training_with_chat_template_kwargs(tiny_model_dir, tmp_path):
    """`chat_template_kwargs` reach the template: this one fails to render unless `enable_thinking` is passed."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% if enable_thinking is not defined %}{{ raise_exception('enable_thinking was not passed') }}{% endif %}"
        + tokenizer.chat_template
        + "{% if add_generation_prompt and not enable_thinking %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    )

    def reward_func(completions, **kwargs):
        return [float(len(completion[0]["content"])) for completion in completions]

    trainer = PowerFlowTrainer(
        model=tiny_model_dir,
        reward_funcs=reward_func,
        args=args_for(tmp_path, chat_template_kwargs={"enable_thinking": False}),
        train_dataset=conversational_dataset(),
        processing_class=tokenizer,
    )
    train_and_check(trainer)


def _fake_generate_factory(tokenizer, rows_by_call):
    """A stand-in for `generate` that appends fixed completions (token ids, right-padded with pad) to the prompts."""
    calls = []

    def fake_generate(input_ids, **kwargs):
        rows = rows_by_call(len(calls), input_ids.shape[0])
        calls.append(input_ids.shape[0])
        width = max(len(r) for r in rows)
        padded = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(padded, device=input_ids.device)], dim=1)

    return fake_generate, calls


def test_training_with_mask_truncated_completions(tiny_model_dir, reward_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    patterns = [
        [101, 102, 103, 104, 105, 106, 107, 108],  # truncated: no EOS within max_completion_length
        [109, 110, 111, eos],  # contains EOS
        [112, 113, 114, 115, 116, 117, 118, eos],  # EOS exactly at the limit
    ]
    fake_generate, calls = _fake_generate_factory(tokenizer, lambda _, n: [patterns[i % 3] for i in range(n)])
    args = args_for(tmp_path, mask_truncated_completions=True, max_completion_length=8)
    with patch("transformers.generation.utils.GenerationMixin.generate", side_effect=fake_generate):
        trainer = PowerFlowTrainer(
            model=tiny_model_dir, reward_funcs=reward_model_dir, args=args, train_dataset=standard_dataset()
        )
        train_and_check(trainer)
    assert calls


def test_training_with_mask_truncated_completions_all_masked(tiny_model_dir, reward_model_dir, tmp_path):
    """Every completion truncated and masked: no learning signal, so no parameter moves. TRL relies on the random
    model never emitting EOS in 8 tokens; here EOS is suppressed so that this holds for sure."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = args_for(
        tmp_path,
        mask_truncated_completions=True,
        max_completion_length=8,
        generation_kwargs={"suppress_tokens": [tokenizer.eos_token_id]},
    )
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=reward_model_dir, args=args, train_dataset=standard_dataset()
    )
    before = snapshot(trainer)
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert min(logged(trainer, "completions/clipped_ratio")) == 1.0
    changed = [n for n, p in before.items() if not torch.equal(p, trainer.model.get_parameter(n))]
    assert not changed, f"Parameters that changed: {changed}"


def test_training_log_completions(tiny_model_dir, tmp_path, capsys):
    args = args_for(tmp_path, log_completions=True, num_completions_to_print=2)
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, reward_funcs=length_reward, args=args, train_dataset=standard_dataset()
    )
    train_and_check(trainer)
    printed = capsys.readouterr().out
    assert "Prompt" in printed and "Completion" in printed and "length_reward" in printed  # rich table, per step
    for step in (1, 2):  # GRPO also writes the completions of each logging step as a parquet table
        table = pd.read_parquet(os.path.join(args.output_dir, "completions", f"completions_{step:05d}.parquet"))
        assert len(table) == 4 and {"prompt", "completion", "length_reward"} <= set(table.columns)


# -------------------------------------------------------------------------------------------------------------- tools
def multiply_tool(a: int, b: int) -> int:
    """
    Multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b


async def async_multiply_tool(a: int, b: int) -> int:
    """
    Asynchronously multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b


def _qwen3_tool_tokenizer(model_dir):
    """The tiny tokenizer with the Qwen3 chat template shipped inside TRL, whose tool calls TRL can parse."""
    import trl

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", "qwen3.jinja")) as f:
        tokenizer.chat_template = f.read()
    return tokenizer


@pytest.mark.parametrize("tool", [multiply_tool, async_multiply_tool], ids=["sync", "async"])
def test_training_with_tools(long_context_moe_model_dir, reward_model_dir, tmp_path, tool):
    """Of 3 completions, 2 call the tool (one with a wrong argument name, so it fails); the 2 tool calls are then
    continued. TRL uses its tiny Qwen3-MoE model."""
    model_dir = long_context_moe_model_dir
    tokenizer = _qwen3_tool_tokenizer(model_dir)
    name = tool.__name__
    texts = [
        f'<tool_call>\n{{"name": "{name}", "arguments": {{"a": 3, "b": 4}}}}\n</tool_call><|im_end|>',
        f'<tool_call>\n{{"name": "{name}", "arguments": {{"a": 3, "c": 4}}}}\n</tool_call><|im_end|>',
        "I don't know any tool<|im_end|>",
    ]
    first = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    done = tokenizer.encode("Done!<|im_end|>", add_special_tokens=False)

    def rows(call, n):
        if n == 3:  # generation for the 3 prompts of a step
            return first
        assert n == 2  # continuation of the two completions that called the tool
        return [done, done]

    fake_generate, calls = _fake_generate_factory(tokenizer, rows)
    # TRL uses 128; the tiny byte-level tokenizer needs more tokens for the same tool call and error message
    args = args_for(tmp_path, per_device_train_batch_size=3, num_generations=3, max_completion_length=256)
    trainer = PowerFlowTrainer(
        model=model_dir,
        reward_funcs=reward_model_dir,
        args=args,
        train_dataset=conversational_dataset(),
        processing_class=tokenizer,
        tools=[tool],
    )
    before = snapshot(trainer)
    with patch.object(trainer.model, "generate", side_effect=fake_generate):
        trainer.train()
    assert_trained(trainer, before)
    assert calls == [3, 2, 3, 2], calls
    assert logged(trainer, "tools/call_frequency")[-1] == pytest.approx(2 / 3)
    assert logged(trainer, "tools/failure_frequency")[-1] == pytest.approx(1 / 2)


# ---------------------------------------------------------------------------------------------------------------- MoE
@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])
def test_training_moe(moe_model_dirs, tmp_path, arch):
    """MoE models train with the trainer swapped; by default the load-balancing loss is on, with the coefficient the
    model config declares, and is logged as `aux_loss` (and `eval_aux_loss` in evaluation, as GRPO does)."""
    model_dir = moe_model_dirs[arch]
    config_coef = AutoModelForCausalLM.from_pretrained(model_dir).config.router_aux_loss_coef
    assert config_coef > 0
    args = args_for(tmp_path, learning_rate=0.1, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    trainer = PowerFlowTrainer(
        model=model_dir,
        reward_funcs=length_reward,
        args=args,
        train_dataset=standard_dataset(),
        eval_dataset=standard_dataset(n=4, seed=1),
    )
    assert trainer.args.router_aux_loss_coef is None  # GRPO's default: use the model's own coefficient
    assert trainer.router_aux_loss_coef == pytest.approx(config_coef)
    train_and_check(trainer)
    aux = logged(trainer, "aux_loss")
    assert len(aux) == 2 and all(v > 0 for v in aux)
    assert logged(trainer, "eval_aux_loss")


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_moe_router_aux_loss_coef(moe_model_dirs, tmp_path, coef):
    """`router_aux_loss_coef` is accepted with GRPO's meaning: 0.0 turns the aux loss off, a value overrides the
    config's."""
    args = args_for(tmp_path, router_aux_loss_coef=coef, learning_rate=0.1)
    assert args.router_aux_loss_coef == coef
    trainer = PowerFlowTrainer(
        model=moe_model_dirs["qwen3_moe"], reward_funcs=length_reward, args=args, train_dataset=standard_dataset()
    )
    assert trainer.router_aux_loss_coef == coef
    train_and_check(trainer)
    assert bool(logged(trainer, "aux_loss")) == (coef != 0.0)


@pytest.mark.parametrize("gradient_accumulation_steps", [1, 2])
def test_moe_aux_loss_is_added_to_the_loss(moe_model_dirs, tmp_path, gradient_accumulation_steps):
    """loss(coef) - loss(0) = coef * aux_loss on the first step (same seed, same generations), with and without
    gradient accumulation (GRPO scales the aux loss like the main loss)."""
    first = {}
    for coef in (0.0, 2.0):
        args = args_for(
            tmp_path / str(coef),
            router_aux_loss_coef=coef,
            max_steps=1,
            per_device_train_batch_size=4 // gradient_accumulation_steps,
            gradient_accumulation_steps=gradient_accumulation_steps,
        )
        trainer = PowerFlowTrainer(
            model=moe_model_dirs["qwen3_moe"], reward_funcs=length_reward, args=args, train_dataset=standard_dataset()
        )
        trainer.train()
        first[coef] = (logged(trainer, "loss")[0], (logged(trainer, "aux_loss") or [None])[0])
    (loss_0, _), (loss_2, aux) = first[0.0], first[2.0]
    assert aux is not None
    assert loss_2 - loss_0 == pytest.approx(2.0 * aux, rel=1e-3, abs=1e-5)


def test_router_aux_loss_coef_on_dense_model_raises(tiny_model_dir, tmp_path):
    """As in GRPO: a non-zero coefficient with a model that has no router is an error, not silently ignored."""
    with pytest.raises(ValueError, match="router_aux_loss_coef"):
        PowerFlowTrainer(
            model=tiny_model_dir,
            reward_funcs=length_reward,
            args=args_for(tmp_path, router_aux_loss_coef=0.01),
            train_dataset=standard_dataset(),
        )


def test_tiny_moe_models_have_router_settings(moe_model_dirs):
    for arch, model_dir in moe_model_dirs.items():
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        config = model.config.get_text_config()
        assert config.output_router_logits is False and config.router_aux_loss_coef > 0, arch
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        assert len(tokenizer) == len(build_tiny_tokenizer())
        out = model(**tokenizer(["What is 1 + 2?"], return_tensors="pt"), output_router_logits=True)
        assert out.aux_loss is not None and torch.isfinite(out.aux_loss), arch


# ------------------------------------------------------------------------------------------------ vision-language
# TRL trains its tiny Gemma3 / LLaVA-Next / Qwen2-VL / Qwen2.5-VL models on the zen-image dataset; here a tiny LLaVA
# (CLIP vision tower + Qwen2 decoder) built offline, on random images. As in TRL, the vision tower and projector are
# not required to change (the tiny init barely passes gradient through them; CLIP's post-layernorm is unused).
VISION_PARAMS = ("model.vision_tower.", "model.multi_modal_projector.")


def image_length_reward(completions, **kwargs):
    return [float(len(completion[0]["content"])) for completion in completions]


def assert_vlm_trained(trainer, before):
    assert trainer.state.log_history[-1]["train_loss"] is not None
    unchanged = [
        n
        for n, p in before.items()
        if not n.startswith(VISION_PARAMS) and torch.equal(p, trainer.model.get_parameter(n))
    ]
    assert not unchanged, f"Parameters that have not changed: {unchanged}"


@pytest.mark.parametrize(
    "case",
    ["plain", "beta_non_zero", "steps_per_generation", "multi_image"],
)
def test_training_vlm(vlm_dir, tmp_path, case):
    """test_training_vlm, test_training_vlm_beta_non_zero, test_training_vlm_and_importance_sampling (reused
    generations: steps_per_generation=2) and test_training_vlm_multi_image."""
    kwargs = {"beta_non_zero": {"beta": 0.1}, "steps_per_generation": {"steps_per_generation": 2}}.get(case, {})
    dataset = tiny_image_prompt_dataset(n=8, images_per_prompt=2 if case == "multi_image" else 1)
    trainer = PowerFlowTrainer(
        model=vlm_dir,
        reward_funcs=image_length_reward,
        args=args_for(tmp_path, learning_rate=0.1, **kwargs),
        train_dataset=dataset,
    )
    before = snapshot(trainer)
    trainer.train()
    assert_vlm_trained(trainer, before)
    if case == "beta_non_zero":
        assert logged(trainer, "kl")


def test_training_vlm_peft(vlm_dir, tmp_path):
    from peft import LoraConfig

    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    base_param_names = [f"base_model.model.{n}" for n, _ in model.named_parameters()]
    trainer = PowerFlowTrainer(
        model=model,
        reward_funcs=image_length_reward,
        args=args_for(tmp_path, learning_rate=0.1),
        train_dataset=tiny_image_prompt_dataset(n=8),
        peft_config=LoraConfig(target_modules=["q_proj", "v_proj"]),
    )
    before = snapshot(trainer)
    trainer.train()
    assert_peft_trained(trainer, before, base_param_names)
