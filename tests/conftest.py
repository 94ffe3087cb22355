import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Markers by test file, so that `make test` (-m "not slow and not distributed") is a short inner loop while the
# README's command (and CI) still runs everything. `distributed`: launches several processes; `slow`: > ~30 s.
DISTRIBUTED = {
    "test_launch.py", "test_launch_matrix.py", "test_multi_node.py", "test_zero3_head_save.py", "test_fsdp2_head.py",
}  # fmt: skip
SLOW = {
    "test_exact_fixed_point.py", "test_trl_grpo_parity.py", "test_benchmarks_smoke.py", "test_compare.py",
    "test_bupo.py", "test_power_sampling.py", "test_demo.py", "test_synthetic_tasks.py", "test_evaluate_script.py",
}  # fmt: skip


def pytest_configure(config):
    config.addinivalue_line("markers", "distributed: launches several processes (torchrun / accelerate launch)")
    config.addinivalue_line("markers", "slow: takes more than ~30 s on 2 CPU cores")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        if name in DISTRIBUTED:
            item.add_marker(pytest.mark.distributed)
        if name in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from trl_powerflow.toys.tiny_models import save_tiny_model

    return save_tiny_model(str(tmp_path_factory.mktemp("tiny") / "qwen2"))


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory):
    from trl_powerflow.toys.enumerable import save_toy_model

    return save_toy_model(str(tmp_path_factory.mktemp("toy") / "toy"))
