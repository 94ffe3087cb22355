"""PowerFlow for TRL: label-free fine-tuning towards the alpha-power of the base model (arXiv 2603.18363)."""

from typing import TYPE_CHECKING

__all__ = ["PowerFlowConfig", "PowerFlowTrainer", "keep_vllm_cpu_weights_reloadable"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import PowerFlowConfig
    from .trainer import PowerFlowTrainer
    from .training.vllm_cpu import keep_vllm_cpu_weights_reloadable


def __getattr__(name: str):
    # Imported on first use, so that `import trl_powerflow` (and with it the `trl-powerflow` command's help) does not
    # load torch and TRL; `from trl_powerflow import PowerFlowTrainer` works as before.
    if name == "PowerFlowConfig":
        from .config import PowerFlowConfig

        return PowerFlowConfig
    if name == "PowerFlowTrainer":
        from .trainer import PowerFlowTrainer

        return PowerFlowTrainer
    if name == "keep_vllm_cpu_weights_reloadable":
        from .training.vllm_cpu import keep_vllm_cpu_weights_reloadable

        return keep_vllm_cpu_weights_reloadable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
