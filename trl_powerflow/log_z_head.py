r"""The learned log-partition head log Z'_phi(q).

Design (FlowRL-style, see PAPER_NOTES §4): features = masked mean of the policy's last-layer hidden states over the
prompt tokens; an MLP (Linear(d, d), GELU, LayerNorm, Dropout) x 2, then Linear(d, 1), plus a constant `offset`.
The output layer starts at 0, so log Z'(q) = offset for every prompt at step 0. The offset is a buffer, not a
parameter: it is set once (from the first batch when no initial value is given) and is never touched by the
optimizer, so ZeRO's master weights cannot overwrite it.
"""

import dataclasses

import torch
from torch import nn

LOG_Z_HEAD_ATTR = "log_z_head"
LOG_Z_HEAD_FILE = "log_z_head.safetensors"


class LogZHead(nn.Module):
    """MLP mapping a prompt representation (B, d) to log Z'(q) (B,)."""

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


def full_head_state(head: nn.Module) -> dict[str, torch.Tensor]:
    """The head's whole state dict on the CPU, also when FSDP shards its parameters. Under FSDP it is a collective:
    every process must call it; the full tensors end up on process 0 (the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    options = StateDictOptions(full_state_dict=True, cpu_offload=distributed)
    return {k: v.detach().cpu().contiguous() for k, v in get_model_state_dict(head, options=options).items()}


def load_full_head_state(head: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole head state dict (as saved in `LOG_Z_HEAD_FILE`) into `head`, sharded by FSDP or not."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(head, state, options=StateDictOptions(full_state_dict=True))


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden_states` (B, P, d) over the positions where `mask` (B, P) is 1."""
    mask = mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def is_log_z_param(name: str) -> bool:
    """Whether a parameter/state-dict name belongs to the log-partition head."""
    return f"{LOG_Z_HEAD_ATTR}." in name or name.startswith(f"{LOG_Z_HEAD_ATTR}.")


def split_log_z_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Split a model state dict into (model-only entries, head entries keyed relative to the head)."""
    model_sd, head_sd = {}, {}
    marker = f"{LOG_Z_HEAD_ATTR}."
    for key, value in state_dict.items():
        if is_log_z_param(key):
            head_sd[key[key.index(marker) + len(marker) :]] = value
        else:
            model_sd[key] = value
    return model_sd, head_sd


class LogZRequest:
    """State of one policy forward that needs its last hidden state: the prompt length, whether the head's features
    are detached, the backbone's last hidden state (set by the backbone hook) and the head outputs (one per chunk)."""

    def __init__(self, prompt_length: int, detach_features: bool = False, keep_hidden: bool = False):
        self.prompt_length = prompt_length
        self.detach_features = detach_features
        self.hidden: torch.Tensor | None = None
        self.log_z: list[torch.Tensor] = []
        self.keep_hidden = keep_hidden  # keep the (detached) hidden states of each forward, e.g. for metrics
        self.kept_hidden: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []  # the head's (detached) inputs, for re-centring after the step

    def value(self) -> torch.Tensor:
        if not self.log_z:
            raise RuntimeError("The policy forward did not reach the log-partition head (no hidden state captured).")
        return torch.cat(self.log_z, dim=0)


_WITH_LOG_Z: dict[type, type] = {}


def with_log_z(output, log_z: torch.Tensor):
    """Return `output` (a `ModelOutput`) with an extra `log_z` field. A real dataclass field, not an added key, so that
    DDP's output flattening (`find_unused_parameters=True`) rebuilds it and sees the head as used in the forward."""
    cls = type(output)
    if cls not in _WITH_LOG_Z:
        field = ("log_z", torch.Tensor | None, dataclasses.field(default=None))
        _WITH_LOG_Z[cls] = dataclasses.make_dataclass(f"{cls.__name__}WithLogZ", [field], bases=(cls,))
    return _WITH_LOG_Z[cls](**output, log_z=log_z)
