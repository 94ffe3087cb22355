r"""The learned log-partition head log Z'_phi(q) and its state-dict plumbing (FSDP/ZeRO-safe, kept out of the
language model's weights)."""

import dataclasses
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

LOG_Z_HEAD_ATTR = "log_z_head"
LOG_Z_HEAD_FILE = "log_z_head.safetensors"


class LogZHead(nn.Module):
    """MLP mapping a prompt representation (B, d) to log Z'(q) (B,): (Linear(d, d), GELU, LayerNorm, Dropout) x 2,
    Linear(d, 1) initialised at 0, plus the buffer `offset` (set from the first batch, moved only by `shift`, so ZeRO's
    master weights cannot overwrite it)."""

    def __init__(self, hidden_size: int, dropout: float = 0.0, init: float | None = 0.0):
        super().__init__()
        layers = []
        for _ in range(2):
            layers += [nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("offset", torch.tensor(0.0 if init is None else float(init)))
        self.register_buffer("initialised", torch.tensor(init is not None))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.out.weight.dtype)
        return self.out(self.body(features)).squeeze(-1).float() + self.offset.float()

    @torch.no_grad()
    def shift(self, delta: float) -> None:
        """Add `delta` to every log Z'(q) and mark the head as initialised."""
        self.offset.add_(delta)
        self.initialised.fill_(True)


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden_states` (B, P, d) over the positions where `mask` (B, P) is 1."""
    mask = mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def is_log_z_param(name: str) -> bool:
    """Whether a parameter/state-dict name belongs to the log-partition head."""
    return f"{LOG_Z_HEAD_ATTR}." in name or name.startswith(f"{LOG_Z_HEAD_ATTR}.")


def split_log_z_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Split a model state dict into (model-only entries, head entries keyed relative to the head)."""
    model_sd, head_sd, marker = {}, {}, f"{LOG_Z_HEAD_ATTR}."
    for key, value in state_dict.items():
        if is_log_z_param(key):
            head_sd[key[key.index(marker) + len(marker) :]] = value
        else:
            model_sd[key] = value
    return model_sd, head_sd


def full_head_state(head: nn.Module) -> dict[str, torch.Tensor]:
    """The head's whole state dict on the CPU, also when FSDP shards it. Under FSDP a collective: every process calls
    it; the full tensors end up on process 0 (the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    options = StateDictOptions(full_state_dict=True, cpu_offload=distributed)
    return {k: v.detach().cpu().contiguous() for k, v in get_model_state_dict(head, options=options).items()}


def load_full_head_state(head: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole head state dict (as saved in `LOG_Z_HEAD_FILE`) into `head`, sharded by FSDP or not."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(head, state, options=StateDictOptions(full_state_dict=True))


_WITH_LOG_Z: dict[type, type] = {}


def with_log_z(output, log_z: torch.Tensor):
    """`output` (a `ModelOutput`) with an extra `log_z` field: a real dataclass field, so that DDP's output flattening
    (`find_unused_parameters=True`) rebuilds it and sees the head as used in the forward."""
    cls = type(output)
    if cls not in _WITH_LOG_Z:
        field = ("log_z", torch.Tensor | None, dataclasses.field(default=None))
        _WITH_LOG_Z[cls] = dataclasses.make_dataclass(f"{cls.__name__}WithLogZ", [field], bases=(cls,))
    return _WITH_LOG_Z[cls](**output, log_z=log_z)


def save_head(trainer, output_dir, state_dict):
    """Save the head of the model's state dict (`state_dict` or the unwrapped model's) beside the weights in
    `LOG_Z_HEAD_FILE`; return the state dict without it."""
    if state_dict is None:
        state_dict = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    state_dict, head_state = split_log_z_state_dict(state_dict)
    if head_state and trainer.args.should_save:
        os.makedirs(output_dir, exist_ok=True)
        head_state = {k: v.detach().cpu().contiguous() for k, v in head_state.items()}
        save_file(head_state, os.path.join(output_dir, LOG_Z_HEAD_FILE))
    return state_dict


def save_gathered_head(trainer, head, output_dir):
    """Save the whole head when the model's state dict was sharded: ZeRO-3 without 16-bit gathering, FSDP sharded
    state dicts (a collective: every process calls it)."""
    if trainer.is_deepspeed_enabled:
        zero = trainer.accelerator.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        if zero.get("stage") != 3 or zero.get("stage3_gather_16bit_weights_on_model_save", False) is True:
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(head.parameters())):  # collective: every rank
            head_state = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
    elif trainer.is_fsdp_enabled and "FULL_STATE_DICT" not in str(
        trainer.accelerator.state.fsdp_plugin.state_dict_type
    ):
        head_state = full_head_state(head)  # collective: every rank
    else:
        return
    if trainer.args.should_save:
        os.makedirs(output_dir, exist_ok=True)
        save_file(head_state, os.path.join(output_dir, LOG_Z_HEAD_FILE))


def load_head(head, checkpoint_dir):
    """Load `LOG_Z_HEAD_FILE` of a checkpoint into `head` (sharded by FSDP or not)."""
    path = os.path.join(checkpoint_dir, LOG_Z_HEAD_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint {checkpoint_dir} has no {LOG_Z_HEAD_FILE}: it was not written by a PowerFlowTrainer with "
            "a learned log-partition head."
        )
    load_full_head_state(head, load_file(path, device="cpu"))  # sharded by FSDP or not
