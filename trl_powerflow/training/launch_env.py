"""What `accelerate launch` on a machine without a GPU needs before the first config is built, for the CLI and for a
user's own script alike (`PowerFlowConfig` calls it): one gloo group of the launched processes, bf16 off."""

import logging
import os

logger = logging.getLogger(__name__)


def launched_world_size() -> int:
    """How many processes the launcher started (`WORLD_SIZE`; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_cpu_process_group() -> bool:
    """Launched with N > 1 processes and no GPU: make them one gloo group (without it, accelerate gives each process
    a world of one, and every process trains alone); with DeepSpeed, create the group now, because ZeRO-3 builds the
    model partitioned inside `from_pretrained`. Returns True when DeepSpeed needs `ddp_backend='gloo'`."""
    import torch

    if launched_world_size() <= 1 or torch.cuda.is_available():
        return False
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        return False
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    return True


def default_bf16_off_without_gpu(config) -> None:
    """GRPOConfig turns bf16 on by default; without a GPU that is TRL's "Your setup doesn't support bf16/gpu" error.
    Left at its default (None) on such a machine, it is turned off, with a notice; an explicit value is kept."""
    from transformers.utils import is_torch_bf16_gpu_available

    if config.bf16 is None and not config.fp16 and not is_torch_bf16_gpu_available():
        config.bf16 = False
        logger.warning("No GPU with bf16 here: training in float32 (bf16=False). Pass bf16=True to force it.")


def check_world_size(accelerator) -> None:
    """The trainer must see every process the launcher started, else each would train alone into one output_dir."""
    if launched_world_size() != accelerator.num_processes:
        raise RuntimeError(
            f"The launcher started {launched_world_size()} processes but this trainer sees "
            f"{accelerator.num_processes}: each process would train alone into the same output_dir. Build the "
            "PowerFlowConfig inside the launched script (it joins the processes into one group), and on a machine "
            "without a GPU launch with accelerate_configs/cpu_ddp.yaml (or a cpu_zero*.yaml)."
        )
