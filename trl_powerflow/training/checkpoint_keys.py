"""Which keys a checkpoint's weights file leaves out on purpose (so that their absence is no warning)."""

from types import SimpleNamespace

from torch import nn


def tied_parameter_names(model: nn.Module) -> set:
    """Names of parameters that share their tensor with an earlier-named parameter (tied embeddings: the checkpoint
    saves the source once and loading re-ties the others), under every prefix the model's state dict uses."""
    first, tied = {}, set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied.add(name)
        else:
            first[id(param)] = name
    return tied


def without_keys(load_result, restored: set):
    """`load_result` (missing_keys, unexpected_keys) with the keys restored elsewhere dropped from missing_keys."""
    missing = [key for key in load_result.missing_keys if key not in restored]
    return SimpleNamespace(missing_keys=missing, unexpected_keys=load_result.unexpected_keys)
