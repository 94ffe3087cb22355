"""The policy's last hidden state, captured during the loss forward: the log-partition head's features and the
scores at the sampling temperature (a context manager BuPO reuses)."""

import dataclasses
from contextlib import contextmanager

import torch
from torch import nn


@dataclasses.dataclass
class LogZRequest:
    """One recorded policy forward: the prompt length, whether the head's features are detached, the backbone's last
    hidden state (set by the capture hook, consumed by the head), the head's outputs and inputs (one per chunk) and,
    with `keep_hidden`, every forward's hidden state (detached unless `keep_grad`)."""

    prompt_length: int
    detach_features: bool = False
    keep_hidden: bool = False
    keep_grad: bool = False
    hidden: torch.Tensor | None = None
    log_z: list = dataclasses.field(default_factory=list)
    features: list = dataclasses.field(default_factory=list)
    kept_hidden: list = dataclasses.field(default_factory=list)

    def value(self) -> torch.Tensor:
        if not self.log_z:
            raise RuntimeError("The policy forward did not reach the log-partition head (no hidden state captured).")
        return torch.cat(self.log_z, dim=0)


class HiddenStateCapture:
    """A forward hook on the policy's backbone: inside `with capture.record(prompt_length) as request`, each backbone
    forward leaves its last hidden state on `request` (no extra pass). Outside `record` it does nothing."""

    def __init__(self, backbone: nn.Module):
        self.request: LogZRequest | None = None
        backbone.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.request is not None:
            self.request.hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            if self.request.keep_hidden:
                hidden = self.request.hidden
                self.request.kept_hidden.append(hidden if self.request.keep_grad else hidden.detach())

    @contextmanager
    def record(self, prompt_length: int, detach_features: bool = False, keep_hidden: bool = False, keep_grad=False):
        self.request = LogZRequest(prompt_length, detach_features, keep_hidden, keep_grad)
        try:
            yield self.request
        finally:
            self.request = None
