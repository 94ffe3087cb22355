"""`trl-powerflow compare` (= scripts/compare.py) end to end on the embedded tiny model with a tiny budget (CI smoke
run), and its pieces."""

import json
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "compare.py")


def load_compare():
    """The harness's functions (`trl_powerflow.experiments.compare`) and the command's `parse_args`
    (`trl_powerflow.cli.compare`), as one namespace."""
    from trl_powerflow.cli.compare import parse_args
    from trl_powerflow.experiments import compare

    return types.SimpleNamespace(**vars(compare), parse_args=parse_args)


def test_quick_run_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "cmp"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    argv = [sys.executable, SCRIPT, "--quick", "--output_dir", str(out), "--model_name_or_path", tiny_model_dir]
    argv += [
        "--methods",
        "base",
        "grpo_accuracy",
        "powerflow",
        "--task_metrics",
        "trl_powerflow.experiments.synthetic_tasks:chain_metrics",
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    for name in (
        "results.json",
        "results.md",
        "accuracy_vs_step.png",
        "length_vs_step.png",
        "quality_vs_diversity.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with open(out / "results.json") as f:
        results = json.load(f)
    info, methods = results["info"], results["methods"]
    assert list(methods) == ["base", "grpo_accuracy", "powerflow"]
    assert info["quality_metric"] == "avg@2" and info["failures"] == []
    assert info["eval_settings"]["num_samples"] == 2 and info["eval_settings"]["num_prompts"] == 2
    assert info["compute_seconds"] >= sum(methods[n]["train_seconds"] for n in ("grpo_accuracy", "powerflow"))

    assert [e["step"] for e in methods["base"]["evals"]] == [0]
    for name in ("grpo_accuracy", "powerflow"):
        method = methods[name]
        assert [e["step"] for e in method["evals"]] == [0, 1, 2]  # the base, then every checkpoint
        assert method["evals"][0] == methods["base"]["evals"][0]  # same starting point, evaluated once
        assert method["train_seconds"] > 0
        assert [h["step"] for h in method["train_log"] if "completions/mean_length" in h] == [1, 2]
        assert os.path.isdir(out / "runs" / name / "checkpoint-2")
        # every method got the same shared recipe, budget and seed; only its own flags differ
        argv_train = method["train_args"]
        assert argv_train[argv_train.index("--max_steps") + 1] == "2"
        assert argv_train[argv_train.index("--seed") + 1] == "0"
        for e in method["evals"]:
            m = e["metrics"]
            assert 0.0 <= m["avg@2"] <= m["pass@2"] <= 1.0
            assert 1 <= m["mean_completion_tokens"] <= 8
            assert 0.0 <= m["distinct_answer_fraction"] <= 1.0
            assert m["semantic_diversity"] is None  # --quick disables the embedder
            assert 0.0 <= m["guess_fraction"] <= 1.0  # the --task_metrics hook ran
            assert e["task_metric_keys"][0] == "guess_fraction"
    assert "--reward_funcs" in methods["grpo_accuracy"]["train_args"]
    assert methods["grpo_accuracy"]["uses_labels"] and not methods["powerflow"]["uses_labels"]
    powerflow_args = methods["powerflow"]["train_args"]
    assert powerflow_args[powerflow_args.index("--alpha") + 1] == "4"

    table = (out / "results.md").read_text()
    assert "| grpo_accuracy |" in table and "| powerflow |" in table and "python scripts/compare.py" in table
    assert "| guess fraction |" in table  # task metrics become columns

    # a re-run reuses the finished methods (no retraining) and rewrites the same table
    completed = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("reusing") == 3


def test_methods_and_argv():
    compare = load_compare()
    args = compare.parse_args(["--output_dir", "x", "--max_steps", "10", "--eval_every", "5", "--alpha_low", "0.25"])
    methods = compare.resolve_methods(args)
    assert list(methods)[:2] == ["base", "grpo_accuracy"]
    assert {"intuitor", "entropy_min", "ttrl", "empo", "powerflow", "powerflow_low_alpha"} <= set(methods)
    assert methods["powerflow_low_alpha"].args == ["--alpha", "0.25", "--objective", "la_tb"]
    assert methods["powerflow_tb_traj"].args[-1] == "tb_traj" and methods["powerflow_tb_token"].args[-1] == "tb_token"
    argv = compare.train_argv(args, methods["ttrl"], "run", "model")
    assert argv[argv.index("--save_steps") + 1] == "5" and argv[-2:] == ["--reward_funcs", "majority_vote"]

    args = compare.parse_args(
        ["--output_dir", "x", "--method", "mine=grpo --reward_funcs pkg.mod:f --beta 0.1", "--methods", "mine"]
    )
    assert compare.resolve_methods(args)["mine"].args == ["--reward_funcs", "pkg.mod:f", "--beta", "0.1"]
    for bad in ("nonsense", "x=sft --lr 1"):
        with pytest.raises(ValueError):
            compare.resolve_methods(compare.parse_args(["--output_dir", "x", "--method", bad]))
    with pytest.raises(ValueError):
        compare.resolve_methods(compare.parse_args(["--output_dir", "x", "--methods", "unknown"]))


def test_checkpoints_listing(tmp_path):
    compare = load_compare()
    for name in ("checkpoint-10", "checkpoint-5", "checkpoint-x", "other"):
        (tmp_path / name).mkdir()
    found = compare.checkpoints(str(tmp_path), 12)
    assert found == [(5, str(tmp_path / "checkpoint-5")), (10, str(tmp_path / "checkpoint-10")), (12, str(tmp_path))]
    assert compare.checkpoints(str(tmp_path), 10)[-1] == (10, str(tmp_path / "checkpoint-10"))


def test_prompt_options_reach_training_and_evaluation(tmp_path):
    compare = load_compare()
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    args = compare.parse_args(
        ["--output_dir", "x", "--eval_dataset", str(data), "--prompt_column", "question", "--prompt_as_chat"]
        + ["--prompt_suffix", " Box it.", "--system_prompt", "Be brief."]
    )
    rows = compare.load_eval_rows(args)
    assert rows[0]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2? Box it."},
    ]
    argv = compare.train_argv(args, compare.resolve_methods(args)["powerflow"], "run", "model")
    expected = {"--prompt_column": "question", "--prompt_suffix": " Box it.", "--prompt_as_chat": "true"}
    expected["--system_prompt"] = "Be brief."
    for flag, value in expected.items():
        assert argv[argv.index(flag) + 1] == value
