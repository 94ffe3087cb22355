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
TRL's tests that differ only in their inputs and config are rows of one table, `test_training[<id>]`, the id being the
TRL test's name less its `test_training_` prefix (e.g. test_training_beta_non_zero -> test_training[beta_non_zero]);
the PEFT tests are `test_training_peft[config|model|with_gradient_checkpointing|vlm]` and the reward processing class
tests `test_reward_processing_classes[<TRL test's name less test_>]`.
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

import copy
import os
import re
from types import SimpleNamespace
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
    MOE_ARCHS,
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
# The tiny models besides conftest's `tiny_model_dir` ("tiny"), by name; the name is also the saved directory's (a
# reward model's metric name, `rewards/<name>/mean`, is its directory's).
SAVERS = {
    "reward-qwen2": save_tiny_reward_model,
    "reward-qwen2-b": lambda path: save_tiny_reward_model(path, seed=1),
    "reward-llama": lambda path: save_tiny_reward_model(path, arch="llama", chat_template=OTHER_CHAT_TEMPLATE),
    "qwen2-untied": lambda path: save_tiny_model(path, tie_word_embeddings=False),
    **{arch: lambda path, arch=arch: save_tiny_moe_model(path, arch=arch) for arch in MOE_ARCHS},
    # Qwen3-MoE with room for the Qwen3 tool-calling system prompt, ~600 tokens with the tiny tokenizer (GRPO ends the
    # tool loop for sequences reaching `max_position_embeddings`).
    "qwen3_moe-2k": lambda path: save_tiny_moe_model(path, arch="qwen3_moe", max_position_embeddings=2048),
    "llava": save_tiny_vlm,
}


class SavedModels(dict):
    """Model directories by name, each saved on first use (once per module)."""

    def __init__(self, root, **ready):
        super().__init__(ready)
        self.root = root

    def __missing__(self, name):
        self[name] = SAVERS[name](self.root / name)
        return self[name]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model_dir):
    return SavedModels(tmp_path_factory.mktemp("parity-models"), tiny=tiny_model_dir)


def standard_dataset(n=8, seed=0):
    return tiny_prompt_dataset(n=n, conversational=False, seed=seed).remove_columns("answer")


def conversational_dataset(n=8, seed=0):
    return tiny_prompt_dataset(n=n, conversational=True, seed=seed).remove_columns("answer")


def iterable_dataset():
    rows = standard_dataset().to_list()
    return IterableDataset.from_generator(lambda: iter(rows))


def eval_prompts():
    return standard_dataset(n=4, seed=1)


# Evaluation every 2 steps, as TRL's eval tests do.
EVAL = dict(per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=2, eval_dataset=eval_prompts)
TRAINER_KWARGS = ("eval_dataset", "processing_class", "peft_config", "tools", "reward_processing_classes")


def args_for(tmp_path, **kwargs) -> PowerFlowConfig:
    return powerflow_args(tmp_path / "out", **kwargs)


def make_trainer(tmp_path, model, reward_funcs, train_dataset=standard_dataset, *, args=None, **kwargs):
    """A PowerFlowTrainer on the 8 standard prompts unless told otherwise: `kwargs` are the trainer's own arguments
    (TRAINER_KWARGS) and, without `args`, the config's; a dataset may be given as a function that builds it."""
    trainer_kwargs = {k: kwargs.pop(k) for k in TRAINER_KWARGS if k in kwargs}
    if callable(trainer_kwargs.get("eval_dataset")):
        trainer_kwargs["eval_dataset"] = trainer_kwargs["eval_dataset"]()
    return PowerFlowTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args if args is not None else args_for(tmp_path, **kwargs),
        train_dataset=train_dataset() if callable(train_dataset) else train_dataset,
        **trainer_kwargs,
    )


def snapshot(trainer, trainable_only=False):
    return {
        n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad or not trainable_only
    }


def changed_params(trainer, before):
    return [n for n, p in before.items() if not torch.equal(p, trainer.model.get_parameter(n))]


def assert_trained(trainer, before, ignore=()):
    """Training loss logged and every parameter changed, but those whose names start with one of `ignore`."""
    assert trainer.state.log_history[-1]["train_loss"] is not None
    changed = set(changed_params(trainer, before))
    unchanged = [n for n in before if not n.startswith(ignore) and n not in changed]
    assert not unchanged, f"Parameters that have not changed: {unchanged}"


def train_and_check(trainer, trainable_only=False, ignore=()):
    before = snapshot(trainer, trainable_only)
    trainer.train()
    assert_trained(trainer, before, ignore)
    return trainer


def assert_peft_trained(trainer, before, base_param_names, skip=("base_layer",)):
    assert trainer.state.log_history[-1]["train_loss"] is not None
    for n, old in before.items():
        new = trainer.model.get_parameter(n)
        if n in base_param_names:
            assert torch.allclose(old, new), f"Base parameter {n} has changed."
        elif not any(s in n for s in skip):
            assert not torch.allclose(old, new), f"Parameter {n} has not changed."


# ------------------------------------------------------------------------------------------------------------ rewards
def length_reward(completions, **kwargs):
    """Rewards longer completions (standard format)."""
    return [float(len(c)) for c in completions]


def unique_letters_reward(completions, **kwargs):
    """Rewards completions with more distinct characters (standard format)."""
    return [float(len(set(c))) for c in completions]


def content_length_reward(completions, **kwargs):
    """Rewards longer completions (conversational format: one assistant message each)."""
    return [float(len(completion[0]["content"])) for completion in completions]


def constant_reward(completions, **kwargs):
    return [1 for _ in completions]


async def async_reward(completions, **kwargs):
    return unique_letters_reward(completions)


def none_reward(completions, **kwargs):
    """Not applicable to any completion."""
    return [None] * len(completions)


# ------------------------------------------------------------------------------------------- construction / datasets
def test_init_minimal(tiny_model_dir, saved, tmp_path, monkeypatch):
    """Only model, reward_funcs and train_dataset: the default config is built from the model name.

    The default config asks for bf16 (GRPOConfig's default), which TrainingArguments refuses on a machine without a
    bf16 GPU; PowerFlowConfig turns that default off there instead (with a notice). GRPOTrainer is run alongside so
    that any other outcome is "behaves as GRPOTrainer does here" on any machine.
    """
    from trl import GRPOTrainer

    monkeypatch.chdir(tmp_path)
    kwargs = dict(model=tiny_model_dir, reward_funcs=saved["reward-qwen2"], train_dataset=standard_dataset())
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


def test_training_model_instance(tiny_model_dir, tmp_path):
    """A model instance instead of a path."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    trainer = make_trainer(tmp_path, model, length_reward)
    assert trainer.model is model
    train_and_check(trainer)


# ------------------------------------------------------------------------------------ training variants (one table)
GRPO_METRIC_KEYS = (
    *("loss", "num_tokens", "reward", "reward_std", "entropy"),
    *(f"rewards/length_reward/{stat}" for stat in ("mean", "std")),
    *(f"completions/{stat}_length" for stat in ("mean", "min", "max", "mean_terminated")),
    "completions/clipped_ratio",
)


def two_steps(trainer):
    assert trainer.state.global_step == 2


def grpo_metric_keys_logged_every_step(trainer):
    """The GRPO metrics that do not depend on advantages keep their names, on every logging step."""
    for key in GRPO_METRIC_KEYS:
        assert len(logged(trainer, key)) == 2, key


def clipped_at_3(trainer):
    assert max(logged(trainer, "completions/max_length")) <= 3
    # a random tiny model rarely emits EOS within 3 tokens: (almost) every completion is clipped
    assert max(logged(trainer, "completions/clipped_ratio")) > 0


def evaluated_on_start(trainer):
    """Evaluation before the first optimizer step (GRPO had a crash there)."""
    eval_steps = [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert eval_steps[0] == 0 and len(eval_steps) == 2


def lm_head_in_fp32(trainer):
    """A bfloat16 model whose LM head is cast to float32 (TRL: tiny Qwen3, untied, and Gemma2, tied)."""
    assert trainer.model.lm_head.weight.dtype == torch.float32


REWARD_NAMES = ("length_reward", "unique_letters_reward")
CAST_LM_HEAD = dict(cast_lm_head_to_fp32=True, model_init_kwargs={"dtype": "bfloat16"}, learning_rate=0.1)


def case(
    id, reward="reward-qwen2", *, model="tiny", dataset=standard_dataset, params="all", logs=(), check=None, **config
):
    """A row of `test_training`: reward (a function, a saved model's name, or a list of them), model (a saved model's
    name), dataset (a function that builds it), which parameters must change ("all", "trainable", or None: not
    checked), keys that must be logged, a further check of the trained trainer, and the config / trainer arguments."""
    row = SimpleNamespace(reward=reward, model=model, dataset=dataset, params=params, logs=logs, check=check)
    return pytest.param(row, config, id=id)


TRAINING_CASES = [
    case("standard_prompt_only"),
    case("conversational_prompt_only", dataset=conversational_dataset),
    case("iterable_dataset", length_reward, dataset=iterable_dataset, check=two_steps),
    case("grpo_metric_keys_are_logged", length_reward, params=None, check=grpo_metric_keys_logged_every_step),
    case("max_completion_length_truncates", length_reward, params=None, check=clipped_at_3, max_completion_length=3),
    # evaluation
    case("with_eval", params=None, logs=["eval_loss"], **EVAL),
    case("with_num_generations_eval", params=None, logs=["eval_loss"], num_generations_eval=1, **EVAL),
    case("eval_on_start", check=evaluated_on_start, eval_on_start=True, **EVAL),
    case(
        "with_eval_dataset_dict",
        length_reward,
        params=None,
        logs=["eval_a_loss", "eval_b_loss"],
        **{**EVAL, "eval_dataset": lambda: {"a": eval_prompts(), "b": conversational_dataset(n=4, seed=2)}},
    ),
    # training variants
    case("multiple_iterations", num_iterations=2),
    case("steps_per_generation", length_reward, per_device_train_batch_size=2, steps_per_generation=2, max_steps=3),
    case("beta_non_zero", logs=["kl"], beta=0.1),
    case("with_bias_correction_kl", beta=0.1, use_bias_correction_kl=True),
    case("with_cast_lm_head_to_fp32-untied", model="qwen2-untied", check=lm_head_in_fp32, **CAST_LM_HEAD),
    case("with_cast_lm_head_to_fp32-tied", check=lm_head_in_fp32, **CAST_LM_HEAD),
    case(
        "num_generations_larger_than_batch_size",
        per_device_train_batch_size=3,
        num_generations=6,
        gradient_accumulation_steps=2,
    ),
    case("multiple_dataloader_workers", dataloader_num_workers=2),
    # reward sources
    case("reward_func_standard", length_reward),
    case("reward_func_conversational", content_length_reward, dataset=conversational_dataset),
    case("multiple_reward_funcs", [length_reward, unique_letters_reward]),
    case(
        "sync_and_async_reward_funcs",
        [length_reward, constant_reward, async_reward],
        logs=["rewards/async_reward/mean"],
    ),
    case("multiple_reward_funcs_with_None_output", [length_reward, none_reward], params="trainable"),
    case(
        "multiple_reward_funcs_with_weights",
        [length_reward, unique_letters_reward],
        logs=[f"rewards/{name}/{stat}" for name in REWARD_NAMES for stat in ("mean", "std")],
        reward_weights=[0.7, 0.3],
    ),
    case("multiple_mixed_reward_funcs", [length_reward, "reward-qwen2"]),
    # generation
    case("with_additional_generation_kwargs", top_p=0.9, top_k=10, min_p=0.01, repetition_penalty=1.1),
    case(
        "with_generation_kwargs",
        generation_kwargs={"do_sample": True, "top_k": 50, "num_beams": 2, "length_penalty": -0.1},
    ),
]


@pytest.mark.parametrize("row, config", TRAINING_CASES)
def test_training(saved, tmp_path, row, config):
    """TRL's training tests that differ only in their inputs and config, one row each, the id being the TRL test's
    name less `test_training_`, and a few GRPO behaviours TRL does not test (iterable_dataset, grpo_metric_keys,
    max_completion_length truncation, a dict of eval datasets, steps_per_generation). A row trains (2 steps unless its
    config says otherwise) and then checks: the training loss is logged and every parameter changed (every trainable
    one for params="trainable"; params=None, for the TRL tests that only check a metric: not checked), each of its
    `logs` keys is logged, and its `check` holds (a function whose docstring says what it adds). A row fails when the
    trainer drops or breaks the row's input or option: e.g. an option that stops reaching training (`beta`: no `kl`
    logged; `cast_lm_head_to_fp32`: a bfloat16 head), a reward function that is not called or whose metric is renamed,
    an eval set that is not evaluated, or a configuration that stops training some parameter.

    steps_per_generation trains three steps, not GRPO's two: each step holds two completions of one prompt, whose
    mean residual the head's first-batch shift (and each re-centring) sets to 0, so the zero-initialised output layer
    gets no gradient at step 1 and the head's body none until step 3 (with two steps the body stays put; seen).
    """

    def load(reward):
        return saved[reward] if isinstance(reward, str) else reward

    reward_funcs = [load(r) for r in row.reward] if isinstance(row.reward, list) else load(row.reward)
    trainer = make_trainer(tmp_path, saved[row.model], reward_funcs, row.dataset, **copy.deepcopy(config))
    if row.params:
        train_and_check(trainer, trainable_only=row.params == "trainable")
    else:
        trainer.train()
    for key in row.logs:
        assert logged(trainer, key), key
    if row.check:
        row.check(trainer)


def test_training_log_completions(tiny_model_dir, tmp_path, capsys):
    trainer = make_trainer(tmp_path, tiny_model_dir, length_reward, log_completions=True, num_completions_to_print=2)
    train_and_check(trainer)
    printed = capsys.readouterr().out
    assert "Prompt" in printed and "Completion" in printed and "length_reward" in printed  # rich table, per step
    for step in (1, 2):  # GRPO also writes the completions of each logging step as a parquet table
        path = os.path.join(trainer.args.output_dir, "completions", f"completions_{step:05d}.parquet")
        table = pd.read_parquet(path)
        assert len(table) == 4 and {"prompt", "completion", "length_reward"} <= set(table.columns)


def test_prepare_input_called_with_correct_data(saved, tmp_path):
    """Generation batches are built from consecutive prompts, each repeated num_generations times, and reused for
    steps_per_generation * num_iterations training steps."""
    prompts = [f"Prompt number {i} is here" for i in range(12)]
    trainer = make_trainer(
        tmp_path,
        saved["tiny"],
        saved["reward-qwen2"],
        Dataset.from_dict({"prompt": prompts}),
        max_steps=-1,
        num_train_epochs=1,
        gradient_accumulation_steps=3,
        steps_per_generation=4,  # 4 * 6 = 24 completions per generation = 6 prompts x 4 generations
        num_generations=4,
        per_device_train_batch_size=6,
        num_iterations=2,
        shuffle_dataset=False,
    )
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
@pytest.mark.parametrize("variant", ["config", "model", "with_gradient_checkpointing", "vlm"])
def test_training_peft(saved, tmp_path, variant):
    """test_training_peft_config (a LoraConfig), test_training_peft_model (a PeftModel; its `ref` adapter is not
    trained), test_training_peft_with_gradient_checkpointing and test_training_vlm_peft (LoRA on the tiny LLaVA's
    q_proj / v_proj): the LoRA weights change, the base model's stay."""
    from peft import LoraConfig, get_peft_model

    if variant == "vlm":
        model = AutoModelForImageTextToText.from_pretrained(saved["llava"])
        reward, dataset = content_length_reward, tiny_image_prompt_dataset(n=8)
        lora = LoraConfig(target_modules=["q_proj", "v_proj"])
    else:
        model = AutoModelForCausalLM.from_pretrained(saved["tiny"], dtype="float32")
        reward, dataset, lora = saved["reward-qwen2"], standard_dataset(), LoraConfig()
    base_param_names = [f"base_model.model.{n}" for n, _ in model.named_parameters()]
    kwargs = {"gradient_checkpointing": True} if variant == "with_gradient_checkpointing" else {}
    if variant == "model":
        model, skip = get_peft_model(model, lora), ("base_layer", "ref")
    else:
        kwargs["peft_config"], skip = lora, ("base_layer",)
    trainer = make_trainer(tmp_path, model, reward, dataset, learning_rate=0.1, **kwargs)
    before = snapshot(trainer)
    trainer.train()
    assert_peft_trained(trainer, before, base_param_names, skip=skip)


# --------------------------------------------------------------------------------------------------- reward sources
def test_training_different_reward_model(saved, tmp_path):
    """A reward model of another architecture with its own tokenizer and chat template, passed as an instance."""
    reward_model = AutoModelForSequenceClassification.from_pretrained(saved["reward-llama"])
    reward_tokenizer = AutoTokenizer.from_pretrained(saved["reward-llama"])
    assert reward_tokenizer.chat_template == OTHER_CHAT_TEMPLATE
    trainer = make_trainer(
        tmp_path, saved["tiny"], reward_model, conversational_dataset, reward_processing_classes=reward_tokenizer
    )
    train_and_check(trainer)
    assert logged(trainer, "rewards/reward-llama/mean")


def test_training_reward_func_additional_column(tiny_model_dir, tmp_path):
    dataset = standard_dataset()
    dataset = dataset.add_column("some_values", list(range(len(dataset))))
    seen = []

    def reward_func(completions, some_values, **kwargs):
        seen.extend(some_values)
        return [float(abs(len(c) - v)) for c, v in zip(completions, some_values, strict=True)]

    train_and_check(make_trainer(tmp_path, tiny_model_dir, reward_func, dataset))
    assert seen and set(seen) <= set(range(len(dataset)))


def test_warning_raised_all_rewards_none(tiny_model_dir, tmp_path, caplog):
    trainer = make_trainer(tmp_path, tiny_model_dir, none_reward)
    with caplog.at_level("WARNING", logger="trl.trainer.grpo_trainer"):
        trainer.train()
    assert "All reward functions returned None for the following kwargs:" in caplog.text


def test_training_with_reward_func_accessing_trainer_state(tiny_model_dir, tmp_path):
    steps = []

    def reward_func(completions, **kwargs):
        trainer_state = kwargs.get("trainer_state")
        assert trainer_state is not None
        steps.append(trainer_state.global_step)
        return unique_letters_reward(completions)

    make_trainer(tmp_path, tiny_model_dir, reward_func, per_device_train_batch_size=2, num_generations=2).train()
    assert steps == [0, 1]


@pytest.mark.parametrize(
    "n_rewards, tokenizers_as_list",
    [(2, False), (2, True), (1, False)],
    ids=[
        "mismatched_reward_processing_classes_length",
        "correct_reward_processing_classes_list",
        "single_reward_model_with_single_processing_class",
    ],
)
def test_reward_processing_classes(saved, tmp_path, n_rewards, tokenizers_as_list):
    """test_mismatched_reward_processing_classes_length (one tokenizer for two reward models: ValueError),
    test_correct_reward_processing_classes_list (one per reward model: both kept) and
    test_single_reward_model_with_single_processing_class (one of each: it is kept, as given)."""
    reward_dirs = [saved["reward-qwen2"], saved["reward-qwen2-b"]][:n_rewards]
    tokenizers = [AutoTokenizer.from_pretrained(d) for d in reward_dirs]
    kwargs = dict(reward_processing_classes=tokenizers if tokenizers_as_list else tokenizers[0])
    rewards = reward_dirs if n_rewards > 1 else reward_dirs[0]
    if n_rewards > 1 and not tokenizers_as_list:
        with pytest.raises(ValueError, match="must match"):
            make_trainer(tmp_path, saved["tiny"], rewards, **kwargs)
        return
    trainer = make_trainer(tmp_path, saved["tiny"], rewards, **kwargs)
    assert len(trainer.reward_processing_classes) == n_rewards
    if n_rewards == 1:
        assert trainer.reward_processing_classes[0] == tokenizers[0]


# ------------------------------------------------------------------------------------------------------- generation
def test_training_with_chat_template_kwargs(tiny_model_dir, tmp_path):
    """`chat_template_kwargs` reach the template: this one fails to render unless `enable_thinking` is passed."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% if enable_thinking is not defined %}{{ raise_exception('enable_thinking was not passed') }}{% endif %}"
        + tokenizer.chat_template
        + "{% if add_generation_prompt and not enable_thinking %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    )
    trainer = make_trainer(
        tmp_path,
        tiny_model_dir,
        content_length_reward,
        conversational_dataset,
        processing_class=tokenizer,
        chat_template_kwargs={"enable_thinking": False},
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


def test_training_with_mask_truncated_completions(saved, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(saved["tiny"])
    eos = tokenizer.eos_token_id
    patterns = [
        [101, 102, 103, 104, 105, 106, 107, 108],  # truncated: no EOS within max_completion_length
        [109, 110, 111, eos],  # contains EOS
        [112, 113, 114, 115, 116, 117, 118, eos],  # EOS exactly at the limit
    ]
    fake_generate, calls = _fake_generate_factory(tokenizer, lambda _, n: [patterns[i % 3] for i in range(n)])
    with patch("transformers.generation.utils.GenerationMixin.generate", side_effect=fake_generate):
        trainer = make_trainer(
            tmp_path, saved["tiny"], saved["reward-qwen2"], mask_truncated_completions=True, max_completion_length=8
        )
        train_and_check(trainer)
    assert calls


def test_training_with_mask_truncated_completions_all_masked(saved, tmp_path):
    """Every completion truncated and masked: no learning signal, so no parameter moves. TRL relies on the random
    model never emitting EOS in 8 tokens; here EOS is suppressed so that this holds for sure."""
    eos = AutoTokenizer.from_pretrained(saved["tiny"]).eos_token_id
    trainer = make_trainer(
        tmp_path,
        saved["tiny"],
        saved["reward-qwen2"],
        mask_truncated_completions=True,
        max_completion_length=8,
        generation_kwargs={"suppress_tokens": [eos]},
    )
    before = snapshot(trainer)
    trainer.train()
    assert trainer.state.log_history[-1]["train_loss"] is not None
    assert min(logged(trainer, "completions/clipped_ratio")) == 1.0
    changed = changed_params(trainer, before)
    assert not changed, f"Parameters that changed: {changed}"


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
    return multiply_tool(a, b)


# the tool's schema comes from its docstring
async_multiply_tool.__doc__ = multiply_tool.__doc__.replace("Multiplies", "Asynchronously multiplies")


def _qwen3_tool_tokenizer(model_dir):
    """The tiny tokenizer with the Qwen3 chat template shipped inside TRL, whose tool calls TRL can parse."""
    import trl

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", "qwen3.jinja")) as f:
        tokenizer.chat_template = f.read()
    return tokenizer


@pytest.mark.parametrize("tool", [multiply_tool, async_multiply_tool], ids=["sync", "async"])
def test_training_with_tools(saved, tmp_path, tool):
    """Of 3 completions, 2 call the tool (one with a wrong argument name, so it fails); the 2 tool calls are then
    continued. TRL uses its tiny Qwen3-MoE model."""
    model_dir = saved["qwen3_moe-2k"]
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
    trainer = make_trainer(
        tmp_path,
        model_dir,
        saved["reward-qwen2"],
        conversational_dataset,
        processing_class=tokenizer,
        tools=[tool],
        per_device_train_batch_size=3,
        num_generations=3,
        # TRL uses 128; the tiny byte-level tokenizer needs more tokens for the same tool call and error message
        max_completion_length=256,
    )
    with patch.object(trainer.model, "generate", side_effect=fake_generate):
        train_and_check(trainer)
    assert calls == [3, 2, 3, 2], calls
    assert logged(trainer, "tools/call_frequency")[-1] == pytest.approx(2 / 3)
    assert logged(trainer, "tools/failure_frequency")[-1] == pytest.approx(1 / 2)


# ---------------------------------------------------------------------------------------------------------------- MoE
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_training_moe(saved, tmp_path, arch):
    """MoE models train with the trainer swapped; by default the load-balancing loss is on, with the coefficient the
    model config declares, and is logged as `aux_loss` (and `eval_aux_loss` in evaluation, as GRPO does)."""
    config_coef = AutoModelForCausalLM.from_pretrained(saved[arch]).config.router_aux_loss_coef
    assert config_coef > 0
    trainer = make_trainer(tmp_path, saved[arch], length_reward, learning_rate=0.1, **EVAL)
    assert trainer.args.router_aux_loss_coef is None  # GRPO's default: use the model's own coefficient
    assert trainer.router_aux_loss_coef == pytest.approx(config_coef)
    train_and_check(trainer)
    aux = logged(trainer, "aux_loss")
    assert len(aux) == 2 and all(v > 0 for v in aux)
    assert logged(trainer, "eval_aux_loss")


@pytest.mark.parametrize("coef", [0.0, 0.5])
def test_moe_router_aux_loss_coef(saved, tmp_path, coef):
    """`router_aux_loss_coef` is accepted with GRPO's meaning: 0.0 turns the aux loss off, a value overrides the
    config's."""
    args = args_for(tmp_path, router_aux_loss_coef=coef, learning_rate=0.1)
    assert args.router_aux_loss_coef == coef
    trainer = make_trainer(tmp_path, saved["qwen3_moe"], length_reward, args=args)
    assert trainer.router_aux_loss_coef == coef
    train_and_check(trainer)
    assert bool(logged(trainer, "aux_loss")) == (coef != 0.0)


@pytest.mark.parametrize("gradient_accumulation_steps", [1, 2])
def test_moe_aux_loss_is_added_to_the_loss(saved, tmp_path, gradient_accumulation_steps):
    """loss(coef) - loss(0) = coef * aux_loss on the first step (same seed, same generations), with and without
    gradient accumulation (GRPO scales the aux loss like the main loss)."""
    first = {}
    for coef in (0.0, 2.0):
        trainer = make_trainer(
            tmp_path / str(coef),
            saved["qwen3_moe"],
            length_reward,
            router_aux_loss_coef=coef,
            max_steps=1,
            per_device_train_batch_size=4 // gradient_accumulation_steps,
            gradient_accumulation_steps=gradient_accumulation_steps,
        )
        trainer.train()
        first[coef] = (logged(trainer, "loss")[0], (logged(trainer, "aux_loss") or [None])[0])
    (loss_0, _), (loss_2, aux) = first[0.0], first[2.0]
    assert aux is not None
    assert loss_2 - loss_0 == pytest.approx(2.0 * aux, rel=1e-3, abs=1e-5)


def test_router_aux_loss_coef_on_dense_model_raises(tiny_model_dir, tmp_path):
    """As in GRPO: a non-zero coefficient with a model that has no router is an error, not silently ignored."""
    with pytest.raises(ValueError, match="router_aux_loss_coef"):
        make_trainer(tmp_path, tiny_model_dir, length_reward, router_aux_loss_coef=0.01)


def test_tiny_moe_models_have_router_settings(saved):
    for arch in MOE_ARCHS:
        model = AutoModelForCausalLM.from_pretrained(saved[arch])
        config = model.config.get_text_config()
        assert config.output_router_logits is False and config.router_aux_loss_coef > 0, arch
        tokenizer = AutoTokenizer.from_pretrained(saved[arch])
        assert len(tokenizer) == len(build_tiny_tokenizer())
        out = model(**tokenizer(["What is 1 + 2?"], return_tensors="pt"), output_router_logits=True)
        assert out.aux_loss is not None and torch.isfinite(out.aux_loss), arch


# ------------------------------------------------------------------------------------------------ vision-language
# TRL trains its tiny Gemma3 / LLaVA-Next / Qwen2-VL / Qwen2.5-VL models on the zen-image dataset; here a tiny LLaVA
# (CLIP vision tower + Qwen2 decoder) built offline, on random images. As in TRL, the vision tower and projector are
# not required to change (the tiny init barely passes gradient through them; CLIP's post-layernorm is unused).
VISION_PARAMS = ("model.vision_tower.", "model.multi_modal_projector.")


@pytest.mark.parametrize(
    "case",
    ["plain", "beta_non_zero", "steps_per_generation", "multi_image"],
)
def test_training_vlm(saved, tmp_path, case):
    """test_training_vlm, test_training_vlm_beta_non_zero, test_training_vlm_and_importance_sampling (reused
    generations: steps_per_generation=2) and test_training_vlm_multi_image."""
    kwargs = {"beta_non_zero": {"beta": 0.1}, "steps_per_generation": {"steps_per_generation": 2}}.get(case, {})
    dataset = tiny_image_prompt_dataset(n=8, images_per_prompt=2 if case == "multi_image" else 1)
    trainer = make_trainer(tmp_path, saved["llava"], content_length_reward, dataset, learning_rate=0.1, **kwargs)
    train_and_check(trainer, ignore=VISION_PARAMS)
    if case == "beta_non_zero":
        assert logged(trainer, "kl")
