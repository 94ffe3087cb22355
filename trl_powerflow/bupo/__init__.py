"""BuPO: internal layer policies through the logit lens, their entropy during training, and bottom-up training."""

from .logit_lens import (
    LayerEntropyCallback,
    LensParts,
    entropy_history,
    install_first,
    layer_entropies,
    lens_logits,
    lens_parts,
    masked_entropy_per_layer,
)
from .trainer import BuPOGRPOConfig, BuPOGRPOTrainer, BuPOMixin, BuPOPowerFlowConfig, BuPOPowerFlowTrainer

__all__ = [
    "BuPOGRPOConfig",
    "BuPOGRPOTrainer",
    "BuPOMixin",
    "BuPOPowerFlowConfig",
    "BuPOPowerFlowTrainer",
    "LayerEntropyCallback",
    "LensParts",
    "entropy_history",
    "install_first",
    "layer_entropies",
    "lens_logits",
    "lens_parts",
    "masked_entropy_per_layer",
]
