"""Which keys a checkpoint's weights file leaves out on purpose (so that their absence is no warning)."""

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
