"""PowerFlow for TRL: label-free fine-tuning towards the alpha-power of the base model (arXiv 2603.18363)."""

from .config import PowerFlowConfig
from .trainer import PowerFlowTrainer

__all__ = ["PowerFlowConfig", "PowerFlowTrainer"]
__version__ = "0.1.0"
