"""`trl-powerflow experiment --quick`: the whole small-scale pipeline of docs/experiment as a smoke run (every stage
tiny, one thread) must write every table and plot the full run writes. Only the structure is checked, not the
numbers (a 4-step run says nothing about the methods)."""

import json
import math
import os
from types import SimpleNamespace

import pytest

from trl_powerflow.cli.experiment import main
from trl_powerflow.experiments import toy_objectives
from trl_powerflow.experiments.evidence_report import REPORT_FILES
from trl_powerflow.experiments.seed_statistics import mean_interval, recovery_share

# Header of every table results.md must hold (column names, in order).
EXPECTED_TABLES = {
    "seeds": ["method", "steps", "avg@8", "pass@8", "maj@8", "tokens", "distinct answers", "guesses", "step errors",
              "avg@8 per seed"],
    "share": ["method", "steps", "share R [95% CI]", "per seed", "gain per seed", "GRPO gain per seed"],
    "learning rate": ["method", "learning rate", "avg@8", "pass@8", "maj@8", "tokens", "distinct answers", "guesses",
                      "step errors", "avg@8 per seed"],
    "learning rate share": ["comparison", "PowerFlow lr", "GRPO lr", "share R [95% CI]", "per seed"],
    "diagnosis": ["method", "steps", "avg@8", "acc. where base mode right", "acc. where base mode wrong",
                  "wrong answers = base mode", "maj answer = base mode", "tokens", "guesses", "distinct answers"],
    "sweep": ["method", "alpha", "avg@8", "pass@8", "maj@8", "tokens", "distinct answers", "guesses", "step errors"],
    "creative": ["method", "quality", "distinct poems", "distinct valid poems", "semantic div.", "tokens"],
    "power sampling": ["sampler", "forward passes / answer", "avg@8", "maj@8", "pass@8", "distinct answers",
                       "guesses"],
    "live": ["run", "target_kl, first steps", "target_kl, last steps", "lambda, last steps",
             "length distortion, last steps"],
    "toy": ["G", "steps", "exact KL", "estimated KL", "exact lambda", "estimated lambda"],
    "toy objectives": toy_objectives.HEADER,
}  # fmt: skip


def tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every Markdown table."""
    found, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            found.append((header, rows))
    return found


def test_interval_and_recovery_share():
    stats = mean_interval([0.5, 0.6, 0.7])
    assert stats["mean"] == pytest.approx(0.6)
    assert stats["high"] - stats["mean"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-3)
    share = recovery_share(pf=[0.7, 0.8, 0.75], grpo=[0.8, 0.9, 0.85], base=[0.4, 0.4, 0.4])
    assert share["share"] == pytest.approx(0.35 / 0.45)
    assert share["low"] < share["share"] < share["high"]
    assert share["per_seed"] == pytest.approx([0.75, 0.8, 0.35 / 0.45])


def test_learning_rate_shares_pair_the_right_runs(tmp_path):
    """The learning_rate stage's shares, from hand-made comparison results: 'shared' pairs both methods at the
    higher rate, 'each at its better rate' takes PowerFlow at the higher rate and GRPO at the recipe's (the rates
    with the higher mean here). Seen to fail with `better` picking the rate with the lower mean, and with the
    shared comparison taking GRPO's run at the recipe's rate."""
    from trl_powerflow.experiments.evidence_summary import learning_rate_summary
    from trl_powerflow.experiments.small_scale import lr_dir

    args = SimpleNamespace(output_dir=str(tmp_path), seeds=[0, 1, 2], quick=False, reasoning_steps=100)
    base, grpo_low, grpo_high = [0.4, 0.35, 0.38], [0.9, 0.88, 0.91], [0.87, 0.86, 0.88]
    pf_low, pf_high = [0.78, 0.79, 0.76], [0.83, 0.86, 0.84]

    def method(value, trained=True):
        return {"trainer": "x" if trained else None, "evals": [{"step": 100 if trained else 0,
                                                                "metrics": {"avg@8": value}}]}  # fmt: skip

    for s in args.seeds:
        os.makedirs(lr_dir(args, s))
        methods = {
            "base": method(base[s], False),
            "grpo_accuracy": method(grpo_high[s]),
            "powerflow": method(pf_high[s]),
        }
        with open(os.path.join(lr_dir(args, s), "results.json"), "w") as f:
            json.dump({"methods": methods}, f)
    low = {"base": base, "grpo_accuracy": grpo_low, "powerflow": pf_low}
    seeds = {"methods": {m: {"100": {"per_seed": {s: {"avg@8": v[s]} for s in args.seeds}}} for m, v in low.items()}}
    shares = learning_rate_summary(args, seeds)["shares"]
    assert shares["shared"]["share"] == pytest.approx(recovery_share(pf_high, grpo_high, base)["share"])
    best = shares["each at its better rate"]
    assert (best["powerflow_lr"], best["grpo_lr"]) == (3e-4, 1e-4)
    assert best["share"] == pytest.approx(recovery_share(pf_high, grpo_low, base)["share"])


def test_quick_pipeline_writes_every_table_and_plot(tmp_path):
    out, docs = tmp_path / "experiment", tmp_path / "docs"
    main(["--quick", "--output_dir", str(out), "--docs_dir", str(docs)], prog="trl-powerflow experiment")
    for name in REPORT_FILES:
        assert (docs / name).is_file() and (docs / name).stat().st_size > 0, name
    lr_runs = ("learning_rate_seed0", "learning_rate_seed1")
    for run in ("seed0", "seed1", *lr_runs, "alpha_sweep", "ablations", "creative"):
        assert (docs / "comparisons" / run / "results.md").is_file(), run
        assert (docs / "comparisons" / run / "results.json").is_file(), run
    text = (docs / "results.md").read_text()
    headers = [header for header, _ in tables(text)]
    for name, expected in EXPECTED_TABLES.items():
        assert expected in headers, (name, headers)
    found = dict((tuple(h), rows) for h, rows in tables(text))
    seeds_rows = found[tuple(EXPECTED_TABLES["seeds"])]
    label_free = {"ttrl", "empo", "intuitor", "powerflow", "powerflow_la_tb_exact", "powerflow_token_balance"}
    assert {r[0] for r in seeds_rows} == {"base", "grpo_accuracy"} | label_free
    assert {r[1] for r in seeds_rows if r[0] != "base"} == {"2", "4"}  # both budgets, N and 2N
    share_rows = found[tuple(EXPECTED_TABLES["share"])]
    assert {(r[0], r[1]) for r in share_rows} == {(m, s) for m in label_free for s in ("2", "4")}
    assert "Machine:" in text and "Compute time per stage" in text
    lr_rows = found[tuple(EXPECTED_TABLES["learning rate"])]
    assert [(r[0], r[1]) for r in lr_rows] == [(m, "0.0003") for m in ("base", "grpo_accuracy", "powerflow")]
    lr_share_rows = found[tuple(EXPECTED_TABLES["learning rate share"])]
    assert [r[0] for r in lr_share_rows] == ["shared", "each at its better rate"]
    assert lr_share_rows[0][1:3] == ["0.0003", "0.0003"]

    report = json.loads((docs / "results.json").read_text())
    assert report["seeds"]["seeds"] == [0, 1]
    for method in ("grpo_accuracy", *sorted(label_free)):
        for step in ("2", "4"):
            assert len(report["seeds"]["methods"][method][step]["per_seed"]) == 2, (method, step)
    assert report["live"], "the PowerFlow runs must log powerflow/target_kl"
    assert all(len(run["steps"]) == 4 for run in report["toy"]["runs"])
    # Every objective on the toy, evaluated before step 1 and after each of its 4 steps. The exact objectives train
    # toward the pure alpha-power, so their two KLs agree; LA-TB's fixed point is tilted, so they differ (seen to
    # fail with `objective_fixed_point` returning the pure power for la_tb).
    objective_runs = {run["objective"]: run for run in report["toy"]["objectives"]["runs"]}
    assert set(objective_runs) == set(toy_objectives.OBJECTIVES)
    for objective, run in objective_runs.items():
        assert [c["step"] for c in run["curve"]] == [0, 1, 2, 3, 4], objective
        same = all(math.isclose(c["kl"], c["kl_to_power"], abs_tol=1e-9) for c in run["curve"])
        assert same == (objective != "la_tb"), objective
    objective_rows = found[tuple(toy_objectives.HEADER)]
    assert [r[0] for r in objective_rows] == list(toy_objectives.OBJECTIVES)
    assert set(report["stage_seconds"]) == {
        "seeds", "learning_rate", "sweep", "ablations", "creative", "diagnosis", "power_sampling", "toy"
    }  # fmt: skip
    assert os.path.isfile(out / "report" / "results.md")
