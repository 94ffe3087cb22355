"""pytest plugin for benchmarks/gpu_check.sh: runs the helper-built test configs on the GPU; records what ran where.

Loaded with `-p benchmarks._gpu_pytest_plugin` (the repository root on PYTHONPATH). Environment:

  POWERFLOW_TEST_DEVICE=cuda   helper-built configs (tests/helpers.py `powerflow_args`) use the GPU ...
  POWERFLOW_TEST_BF16=1|0      ... in bf16 (default with cuda) or float32
  POWERFLOW_GPU_PATCH_HELPERS=1  wrap `helpers.powerflow_args` here with the same switch, for a tests/helpers.py that
                               does not read POWERFLOW_TEST_DEVICE itself (the fallback; without it those tests run
                               on the CPU as written)
  POWERFLOW_GPU_DIAG_DIR=DIR   write DIR/diag-<worker>.json at the end: how many TrainingArguments were built with
                               use_cpu / bf16 set, and this process's CUDA peak memory

Tests that build their own config (e.g. tests/test_exact_fixed_point.py, GRPOConfig(use_cpu=True) in
tests/test_drop_in.py) are not changed: the diagnostics show how many configs ran on the CPU.
"""

import collections
import json
import os
import sys

_COUNTS = collections.Counter()


def _import_early():
    """Import the package (and with it trl's GRPOTrainer) now, while tests/ is not yet on sys.path: a folder under
    tests/ named like an optional dependency (e.g. tests/vllm/) would otherwise be taken for that package by the
    availability checks of transformers/trl. An import error is left for the tests to report."""
    try:
        import trl_powerflow.trainer  # noqa: F401  (the package itself imports its trainer lazily)
    except Exception:  # noqa: BLE001
        pass


_import_early()


def _device_defaults():
    device = os.environ.get("POWERFLOW_TEST_DEVICE", "cpu").lower()
    bf16 = os.environ.get("POWERFLOW_TEST_BF16", "1" if device == "cuda" else "0") == "1"
    return {"use_cpu": device != "cuda", "bf16": bf16}


def _patch_helpers():
    # tests/ is importable here: pytest put it on sys.path when it loaded tests/conftest.py (rootdir conftest,
    # "prepend" import mode), before any pytest_configure; the test modules import `helpers` the same way.
    import helpers

    original = helpers.powerflow_args
    if getattr(original, "_gpu_patched", False):
        return

    def powerflow_args(output_dir, **kwargs):
        for key, value in _device_defaults().items():
            kwargs.setdefault(key, value)  # an explicit argument of the test wins, as with helpers' own defaults
        return original(output_dir, **kwargs)

    powerflow_args._gpu_patched = True
    powerflow_args.__doc__ = original.__doc__
    helpers.powerflow_args = powerflow_args


def _count_configs():
    from transformers import TrainingArguments

    original = TrainingArguments.__post_init__
    if getattr(original, "_gpu_counted", False):
        return

    def __post_init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        where = "cpu" if getattr(self, "use_cpu", False) else "accelerator"
        dtype = "bf16" if getattr(self, "bf16", False) else "fp16" if getattr(self, "fp16", False) else "fp32"
        _COUNTS[f"{where}/{dtype}"] += 1

    __post_init__._gpu_counted = True
    TrainingArguments.__post_init__ = __post_init__


def pytest_configure(config):
    if os.environ.get("POWERFLOW_GPU_PATCH_HELPERS") == "1":
        _patch_helpers()
    _count_configs()


def pytest_sessionfinish(session, exitstatus):
    diag_dir = os.environ.get("POWERFLOW_GPU_DIAG_DIR")
    if not diag_dir:
        return
    import torch

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    cuda = torch.cuda.is_available()
    out = {
        "worker": worker,
        "configs": dict(_COUNTS),
        "cuda_available": cuda,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "helpers_patched": getattr(sys.modules.get("helpers"), "powerflow_args", None) is not None
        and getattr(sys.modules["helpers"].powerflow_args, "_gpu_patched", False),
        "device_defaults": _device_defaults(),
    }
    os.makedirs(diag_dir, exist_ok=True)
    with open(os.path.join(diag_dir, f"diag-{worker}.json"), "w") as f:
        json.dump(out, f)
