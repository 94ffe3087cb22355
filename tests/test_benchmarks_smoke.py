"""The benchmark scripts must not rot: run each with `--quick` (as a user would, in subprocesses) and check the
structure of the JSON they write. The numbers themselves are not asserted: timing on shared CI machines is noise at
this budget. The three scripts run concurrently to keep the whole module well under a minute."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("step_cost", "waste", "convergence", "loss_cost")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    base = tmp_path_factory.mktemp("benchmarks")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    procs = {}
    for name in SCRIPTS:
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(base / name)]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    results = {}
    try:
        for name, proc in procs.items():
            output, _ = proc.communicate(timeout=300)
            text = output.decode(errors="replace")
            assert proc.returncode == 0, f"{name} --quick failed:\n{text[-4000:]}"
            with open(base / name / f"{name}.json") as f:
                results[name] = json.load(f)
            assert (base / name / f"{name}.md").is_file()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _is_ratio(summary):
    return set(summary) >= {"median", "ci95", "n"} and len(summary["ci95"]) == 2 and summary["n"] >= 1


def test_step_cost_quick(quick_results):
    result = quick_results["step_cost"]
    meta = result["meta"]
    assert meta["mode"] == "quick"
    assert set(meta["machine"]) >= {"nproc", "cpu", "ram_gb", "torch", "trl", "transformers"}
    assert meta["arms"] == ["powerflow", "grpo_beta", "grpo_beta0"]
    (point,) = result["points"]
    for arm in meta["arms"]:
        a = point["arms"][arm]
        assert a["step_time_s"]["median"] > 0
        assert len(a["step_times_s"]) == meta["settings"]["steps"] * meta["settings"]["repeats"]
        assert a["peak_rss_mb"] > 0
        assert a["completion_tokens_per_s"] > 0
        assert set(a["split_s"]) >= {"generate", "base_forward", "policy_forward", "backward", "other"}
    # Only PowerFlow and GRPO beta>0 run the frozen model's forward; nobody runs an old-policy pass on-policy.
    assert point["arms"]["powerflow"]["split_s"]["base_forward"] > 0
    assert point["arms"]["grpo_beta"]["split_s"]["base_forward"] > 0
    assert point["arms"]["grpo_beta0"]["split_s"]["base_forward"] == 0
    assert all(point["arms"][a]["split_s"]["old_forward"] == 0 for a in meta["arms"])
    for key in ("powerflow/grpo_beta", "powerflow/grpo_beta0", "grpo_beta/grpo_beta0"):
        assert _is_ratio(point["ratios"][key])
        assert _is_ratio(point["cpu_time_ratios"][key])
    assert point["rss_ratio_powerflow/grpo_beta"] > 0
    assert set(point["targets"]) == {
        "time_vs_grpo_beta<=1.00",
        "time_vs_grpo_beta0<=implied",
        "rss_vs_grpo_beta<=1.05",
    }
    assert set(result["targets"]) == set(point["targets"])


def test_waste_quick(quick_results):
    result = quick_results["waste"]
    (config,) = result["configs"].values()
    assert set(config["items"]) == {"old_pass", "head_features"}  # the quick run starts only 4 arms
    for item in config["items"].values():
        assert item["before_s"] > 0 and item["after_s"] > 0
        assert _is_ratio(item["ratio_before/after"])
    split = {arm: a["split_s"] for arm, a in config["arms"].items()}
    assert split["pf_force_old_pass"]["old_forward"] > 0 and split["powerflow"]["old_forward"] == 0
    assert split["pf_group_fused"]["old_forward"] == 0  # the suggested fix needs no no-grad policy pass
    assert "powerflow" in result["syncs"]
    assert any("trl_powerflow" in site for site in result["syncs"]["powerflow"]["sites"])


def test_convergence_quick(quick_results):
    result = quick_results["convergence"]
    assert set(result["summary"]) == {
        "la_tb/head",
        "la_tb/group",
        "tb_traj/head",
        "tb_traj/group",
        "la_tb_exact/head",
        "token_balance/head",
    }
    for run in result["runs"]:
        assert run["kl_start"] > 0
        assert run["curve"][0]["step"] == 0 and run["curve"][-1]["step"] == result["meta"]["steps"]
        assert all(c["kl"] >= -1e-9 for c in run["curve"])
        assert set(run["reach"]) == {str(f) for f in result["meta"]["fracs"]}


def test_loss_cost_quick(quick_results):
    result = quick_results["loss_cost"]
    (config,) = result["configs"].values()
    assert set(config["arms"]) == {"pf_head", "pf_detach", "pf_group", "grpo_beta", "grpo_beta0"}
    for arm, a in config["arms"].items():
        assert a["median_ms"] > 0 and len(a["times_s"]) == result["meta"]["reps"]
        assert _is_ratio(config["ratios_to_grpo_beta"][arm])
    assert set(config["head_cost_ms"]) == {"median", "ci95"}
