"""The private TRL / transformers surfaces the trainer relies on: the written reason for the `trl==1.16.*` pin and
the checklist for the next TRL upgrade. Each entry says where it is used; the test fails when one disappears or its
signature changes, and when the package starts using a private GRPOTrainer name that is not listed here."""

import inspect
import re
from pathlib import Path

import pytest
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils

PACKAGE = Path(__file__).resolve().parents[1] / "trl_powerflow"

# GRPOTrainer methods overridden or called, with the parameters the package passes or receives.
METHODS = {
    "_generate_and_score_completions": ["self", "inputs"],  # overridden: adds base log-probs, psi, counts
    "_compute_loss": ["self", "model", "inputs"],  # overridden: the LA-TB loss
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],  # overridden
    "_get_per_token_logps_and_entropies": [  # called (and overridden by BuPO)
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
    ],  # fmt: skip
    "_prepare_inputs": ["self", "generation_batch"],  # overridden by BuPO
    "training_step": ["self", "model", "inputs", "num_items_in_batch"],  # overridden: log Z' re-centring
    "_save": ["self", "output_dir", "state_dict"],  # overridden: the head beside the weights
    "_load_from_checkpoint": ["self", "resume_from_checkpoint", "model"],  # overridden: the head on resume
    "save_model": ["self", "output_dir", "_internal_call"],  # overridden: the head under ZeRO-3 / FSDP sharding
    "log": ["self", "logs", "start_time"],  # overridden: the completions table
    "create_optimizer": ["self", "model"],  # overridden: the head's param group
    "_load_best_model": ["self"],  # overridden: load_best_model_at_end restores the head too
    "_issue_warnings_after_load": ["self", "load_result"],  # overridden: no false "missing keys" for the head
    "create_model_card": ["self", "model_name", "dataset_name", "tags"],  # overridden: a local base named
}

# GRPOTrainer attributes read or written (set in its __init__ or training loop).
ATTRIBUTES = {
    "_metrics": "metrics appended per micro-batch, averaged in log()",
    "_logs": "prompts/completions/rewards deques of the completions table",
    "_step": "micro-batch counter: the end of an optimizer step",
    "_buffered_inputs": "BuPO drops buffered generations across its phase switch",
    "vllm_generation": "its `_iter_named_params` is filtered so the head never reaches vLLM",
    "aux_loss_enabled": "MoE aux loss added as GRPO adds it",
    "router_aux_loss_coef": "MoE aux loss coefficient",
    "current_gradient_accumulation_steps": "loss normalisation",
    "num_generations": "group size",
    "num_generations_eval": "group size in eval",
    "epsilon_low": "clip of w",
    "epsilon_high": "clip of w",
    "temperature": "sampling temperature",
    "ref_model": "replaced by the frozen base",
    "reward_weights": "psi weights",
    "reward_funcs": "psi sources",
    "reward_func_names": "placeholder reward removed",
    "reward_processing_classes": "placeholder reward removed",
    "log_completions": "completions table",
    "num_completions_to_print": "completions table",
    "log_unique_prompts": "completions table",
    "use_vllm": "head excluded from vLLM sync",
    "beta": "KL term",
}

# Helpers imported from trl.trainer.utils, trl.models and trl.models.utils.
HELPERS = {
    "add_fused_lm_head": ["model", "temperature", "cast_lm_head_to_fp32", "outputs"],
    "create_model_from_path": ["model_id"],
    "disable_dropout_in_model": ["model"],
    "get_config_model_id": ["config"],
    "use_adapter": ["model", "adapter_name"],
    "print_prompt_completions_sample": [
        "prompts",
        "completions",
        "rewards",
        "advantages",
        "step",
        "num_samples",
        "extra",
    ],
    "strip_images_from_messages": ["messages"],
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_grpo_trainer_methods(name):
    parameters = list(inspect.signature(getattr(GRPOTrainer, name)).parameters)
    assert parameters[: len(METHODS[name])] == METHODS[name], (name, parameters)


def test_grpo_trainer_attributes_are_set_by_grpo():
    source = inspect.getsource(GRPOTrainer) + inspect.getsource(GRPOTrainer.__mro__[1])
    for name in ATTRIBUTES:
        assert re.search(rf"self\.{name}\b", source), name
    generation = inspect.getsource(__import__("trl.generation.vllm_generation", fromlist=["x"]))
    assert "def _iter_named_params" in generation


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_trl_helpers(name):
    from trl import models
    from trl.models import utils as models_utils

    function = next(getattr(m, name) for m in (trl_utils, models, models_utils) if hasattr(m, name))
    parameters = list(inspect.signature(function).parameters)
    assert [p for p in HELPERS[name] if p not in parameters] == [], (name, parameters)


def test_every_private_grpo_name_the_package_uses_is_listed():
    """A new private GRPOTrainer name used by the package must be added above (and to the upgrade checklist)."""
    own = set()
    used = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        own |= set(re.findall(r"def (_\w+)\(", text)) | set(re.findall(r"self\.(_\w+)\s*(?::[^=\n]+)?=", text))
        used |= set(re.findall(r"self\.(_\w+)", text))
    grpo_private = {name for name in used - own if hasattr(GRPOTrainer, name) or name in ATTRIBUTES}
    unlisted = {name for name in used - own if name not in METHODS and name not in ATTRIBUTES}
    unlisted = {name for name in unlisted if not name.startswith("_bupo") and not name.startswith("__")}
    assert grpo_private <= set(METHODS) | set(ATTRIBUTES)
    assert not unlisted, f"private names used but neither defined by the package nor listed here: {sorted(unlisted)}"
