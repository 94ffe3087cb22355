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
    forward leaves its last hidden state on `request` (no extra pass). The hook, and those added with `add_hook`,
    are registered only for the duration of `record`: generation and the base model's forward run without them."""

    def __init__(self, backbone: nn.Module):
        self.request: LogZRequest | None = None
        self._hooks = [(backbone, self._hook, False)]

    def add_hook(self, module: nn.Module, hook, with_kwargs: bool = False) -> None:
        """Run `hook` as a forward hook of `module` during every `record` (after the backbone's own)."""
        self._hooks.append((module, hook, with_kwargs))

    def _hook(self, module, inputs, output):
        if self.request is not None:  # None while a caller inside `record` runs a forward of its own
            self.request.hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            if self.request.keep_hidden:
                hidden = self.request.hidden
                self.request.kept_hidden.append(hidden if self.request.keep_grad else hidden.detach())

    @contextmanager
    def record(self, prompt_length: int, detach_features: bool = False, keep_hidden: bool = False, keep_grad=False):
        self.request = LogZRequest(prompt_length, detach_features, keep_hidden, keep_grad)
        # prepend: ahead of the hooks DeepSpeed / FSDP2 put on these modules when they wrap them (as when registered
        # at init, before the wrapping), so the head's output is part of the forward they see
        handles = [m.register_forward_hook(h, with_kwargs=kw, prepend=True) for m, h, kw in self._hooks]
        try:
            yield self.request
        finally:
            for handle in handles:
                handle.remove()
            self.request = None
