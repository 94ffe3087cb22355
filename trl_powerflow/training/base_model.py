"""The frozen base model p_base: the starting checkpoint, scored at temperature 1 beside the policy."""

import copy

from accelerate.utils import is_peft_model
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import add_fused_lm_head, create_model_from_path, disable_dropout_in_model, get_config_model_id


def copy_base_before_init(model, args, peft_config):
    """Before GRPOTrainer patches the policy: a frozen copy of an instantiated full model (None for a path, PEFT or
    ZeRO-3, whose base comes from the path or the disabled adapter). A pretrained `PeftModel` gets a 'ref' adapter
    for any beta (GRPOTrainer adds it only for beta != 0; PowerFlow always needs the base)."""
    if peft_config is not None or isinstance(model, str):
        return None
    if is_peft_model(model):
        if args.beta == 0.0:
            add_ref_adapter(model)
        return None
    zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
    return None if zero3 else copy.deepcopy(model)


def add_ref_adapter(model) -> None:
    """Copy the pretrained 'default' adapter into a frozen 'ref' adapter, as GRPOTrainer does for beta != 0."""
    if "ref" in model.peft_config:
        return
    model.add_adapter("ref", model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            model.get_parameter(name.replace(".default.", ".ref.")).data.copy_(param.data)


def create_base_model(trainer, base_copy, quantization_config):
    """Frozen p_base for full fine-tuning, prepared like GRPOTrainer's reference model: `base_copy`, or loaded from the
    policy's path."""
    args = trainer.args
    if base_copy is not None:
        base = base_copy
    else:
        model_init_kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            model_init_kwargs["quantization_config"] = quantization_config
        if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            model_init_kwargs["device_map"] = None
        model_init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        model_init_kwargs.setdefault("dtype", trainer.model.dtype)
        model_init_kwargs.setdefault("attn_implementation", trainer.model.config._attn_implementation)
        base = create_model_from_path(get_config_model_id(trainer.model.config), **model_init_kwargs)
    base.requires_grad_(False)
    base.eval()
    if args.disable_dropout:
        disable_dropout_in_model(base)
    add_fused_lm_head(base, temperature=1.0, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32)
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed(base, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        return prepare_fsdp(base, trainer.accelerator)
    return trainer.accelerator.prepare_model(base, evaluation_mode=True)
