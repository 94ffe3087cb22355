"""Every bad input of `trl-powerflow train` (= scripts/train.py; data, recipe, command line, model, checkpoint) fails
with one message that says what to change, before any model is loaded; and `check_prompt_dataset`, the prompt-dataset
check."""

import json
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import PreTrainedModel

from trl_powerflow.data import check_prompt_dataset

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "scripts" / "recipes" / "tiny_cpu.yaml"
GRPO_RECIPE = REPO / "scripts" / "recipes" / "tiny_cpu_grpo.yaml"
GRPO_WITHOUT_REWARD = "".join(f"{line}\n" for line in GRPO_RECIPE.read_text().splitlines() if "reward" not in line)


@pytest.fixture(scope="module")
def train():
    from trl_powerflow.cli import train

    return train


def jsonl(*rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def chat(*contents):
    return [{"role": "user", "content": content} for content in contents]


def bad_data(content, match, *extra):
    """A case whose data file d.jsonl (`--dataset_name`) holds `content`: ValueError matching `match`."""
    return {"d.jsonl": content}, ["--dataset_name", "{tmp}/d.jsonl", *extra], ValueError, match


# case: (files to write {name: text or bytes}, extra argv with {tmp} for the temporary folder, error, message fragment)
CASES = {
    # data
    "missing_dataset_file": ({}, ["--dataset_name", "{tmp}/missing.jsonl"], FileNotFoundError, "does not exist"),
    "empty_dataset_file": bad_data("", "is empty"),
    "blank_dataset_file": bad_data("\n  \n", "is empty"),
    "malformed_jsonl": bad_data(
        '{"prompt": "What is 1 + 1?"}\n{"prompt": \n', "line 2 is not valid JSON.*one JSON object per line"
    ),
    "jsonl_of_strings": bad_data('"What is 1 + 1?"\n', "line 1 is a string, not a JSON object"),
    "not_utf8": bad_data(b"\xff\xfe\x00\x01\n", "not UTF-8"),
    "unsupported_extension": ({"d.txt": "hi\n"}, ["--dataset_name", "{tmp}/d.txt"], ValueError, "unsupported exten"),
    "no_prompt_column": bad_data(jsonl({"question": "What is 1 + 1?"}), "no column 'prompt'.*--prompt_column"),
    "empty_prompt": bad_data(jsonl({"prompt": ""}), r"row 0 \(0-based\): the prompt is blank.*fix or remove"),
    "whitespace_prompt": bad_data(
        jsonl({"prompt": "What is 1 + 1?"}, {"prompt": " \n\t"}), "the first is row 1 .*blank"
    ),
    "empty_message_list": bad_data(
        jsonl({"prompt": chat("What is 1 + 1?")}, {"prompt": []}), "row 1 .*empty list of messages"
    ),
    "empty_message_content": bad_data(
        jsonl({"prompt": chat("What is 1 + 1?")}, {"prompt": chat(" ", "")}),
        "row 1 .*no message with non-blank content",
    ),
    "non_text_prompts": bad_data(jsonl({"prompt": 1}, {"prompt": 2}), "row 0 .*not text or a list of chat messages"),
    "empty_prompt_in_other_column": bad_data(jsonl({"question": ""}), "row 0 .*blank", "--prompt_column", "question"),
    "max_train_samples_zero": ({}, ["--max_train_samples", "0"], ValueError, "--max_train_samples must be >= 1"),
    "max_train_samples_zero_with_data": bad_data(
        jsonl({"prompt": "What is 1 + 1?"}), "--max_train_samples must be >= 1", "--max_train_samples", "0"
    ),
    # recipe
    "missing_recipe": ({}, ["--config", "{tmp}/missing.yaml"], FileNotFoundError, "Recipe .* does not exist"),
    "recipe_not_a_mapping": ({"r.yaml": "- alpha\n- 4.0\n"}, ["--config", "{tmp}/r.yaml"], ValueError, "YAML mapping"),
    "empty_recipe": ({"r.yaml": ""}, ["--config", "{tmp}/r.yaml"], ValueError, "must be a YAML mapping"),
    "recipe_not_yaml": ({"r.yaml": "alpha: [4.0\n"}, ["--config", "{tmp}/r.yaml"], ValueError, "not valid YAML"),
    "recipe_not_yaml_with_trainer": (
        {"r.yaml": "alpha: [4.0\n"},
        ["--config", "{tmp}/r.yaml", "--trainer", "grpo"],
        ValueError,
        "not valid YAML",
    ),
    "unknown_recipe_key": (
        {"r.yaml": RECIPE.read_text() + "alhpa: 2.0\n"},
        ["--config", "{tmp}/r.yaml"],
        ValueError,
        "Unknown arguments from config file: \\['alhpa'\\]. Remove them or fix their spelling",
    ),
    # command line
    "unknown_trainer": ({}, ["--trainer", "ppo"], ValueError, "`trainer` must be one of"),
    "unknown_flag": ({}, ["--alhpa", "2.0"], ValueError, "Unknown command-line arguments"),
    "head_option_typed_with_group": (
        {},
        ["--log_z_estimator", "group", "--log_z_learning_rate", "0.1"],
        ValueError,
        "cannot be used with `log_z_estimator='group'`.*Unset them or use 'head'",
    ),
    "head_dropout_out_of_range": ({}, ["--log_z_dropout", "1.0"], ValueError, "`log_z_dropout` must be a number"),
    "grpo_without_reward": (
        {"r.yaml": GRPO_WITHOUT_REWARD},
        ["--config", "{tmp}/r.yaml"],
        ValueError,
        "GRPO needs at least one reward: pass --reward_funcs",
    ),
    "unknown_reward": ({}, ["--reward_funcs", "acuracy"], ValueError, "Unknown reward 'acuracy'.*Allowed names"),
    "unimportable_reward": ({}, ["--reward_funcs", "no_such_module:f"], ValueError, "Cannot import module"),
    # model
    "missing_model": ({}, ["--model_name_or_path", "{tmp}/no-such-model"], FileNotFoundError, "does not exist"),
    # checkpoint
    "resume_from_missing_dir": (
        {},
        ["--resume_from_checkpoint", "{tmp}/out/checkpoint-9"],
        FileNotFoundError,
        "is not a directory. Pass a checkpoint-<step> directory",
    ),
    "resume_from_non_checkpoint": (
        {"not-a-checkpoint/config.json": "{}"},
        ["--resume_from_checkpoint", "{tmp}/not-a-checkpoint"],
        FileNotFoundError,
        "not a training checkpoint",
    ),
    "resume_last_without_output_dir": (
        {},
        ["--resume_from_checkpoint", "last"],
        FileNotFoundError,
        "no checkpoint-<step> directory in --output_dir .* drop --resume_from_checkpoint",
    ),
    "resume_last_without_checkpoint": (
        {"out/notes.txt": "an earlier run without checkpoints"},
        ["--resume_from_checkpoint", "true"],
        FileNotFoundError,
        "no checkpoint-<step> directory in --output_dir",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_with_one_clear_message_before_training(train, tiny_model_dir, tmp_path, monkeypatch, case):
    files, extra, error, match = CASES[case]
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    output_dir = tmp_path / "out"
    args = ["--config", str(RECIPE), "--model_name_or_path", tiny_model_dir, "--output_dir", str(output_dir)]
    args += ["--max_steps", "1", "--report_to", "none"] + [arg.format(tmp=tmp_path) for arg in extra]
    before = sorted(output_dir.rglob("*")) if output_dir.exists() else None

    def no_model_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_model_loading))
    with pytest.raises(error, match=match):
        train.main(args)
    assert (sorted(output_dir.rglob("*")) if output_dir.exists() else None) == before  # nothing written


@pytest.mark.parametrize("flags", [["--log_z_estimator", "group"], ["--log_z_estimator=group"]])
def test_group_estimator_drops_the_recipes_head_only_keys(train, capsys, flags):
    """tiny_cpu.yaml sets log_z_learning_rate for the head; switching to 'group' on the command line drops it."""
    _, training_args, _ = train.parse(["--config", str(RECIPE), *flags])
    assert training_args.log_z_estimator == "group" and training_args.log_z_learning_rate is None
    assert "ignoring the recipe's head-only keys ['log_z_learning_rate']" in capsys.readouterr().out


def test_group_estimator_from_the_recipe_drops_its_head_only_keys(train, tmp_path, capsys):
    recipe = tmp_path / "group.yaml"
    recipe.write_text(RECIPE.read_text().replace("log_z_estimator: head", "log_z_estimator: group"))
    recipe.write_text(recipe.read_text() + "log_z_detach_features: true\n")
    _, training_args, _ = train.parse(["--config", str(recipe)])
    assert training_args.log_z_estimator == "group" and not training_args.log_z_detach_features
    assert "['log_z_learning_rate', 'log_z_detach_features']" in capsys.readouterr().out
    # the head keeps them
    _, training_args, _ = train.parse(["--config", str(RECIPE)])
    assert training_args.log_z_learning_rate == 1e-2


GOOD = [
    Dataset.from_dict({"prompt": ["What is 1 + 1?", " 2 + 2 "]}),
    Dataset.from_dict({"prompt": [chat("What is 1 + 1?"), [{"role": "system", "content": ""}, *chat("Hi")]]}),
    Dataset.from_dict({"prompt": ["", "ok"]}).select([1]),  # only the selected rows count
    Dataset.from_dict({"prompt": [""]}).to_iterable_dataset(),  # content of an IterableDataset is not read
    None,
]


@pytest.mark.parametrize("dataset", GOOD)
def test_check_prompt_dataset_accepts_usable_prompts(dataset):
    check_prompt_dataset("train_dataset", dataset)


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        ([], "`train_dataset` is empty: "),
        (["What is 1 + 1?", "   "], r"1 unusable prompt\(s\); the first is row 1 \(0-based\): the prompt is blank"),
        (["", "a", ""], r"2 unusable prompt\(s\); the first is row 0 "),
        (["a", None], "row 1 .*is missing"),
        ([chat("a"), []], "row 1 .*empty list of messages"),
        ([chat("a"), chat("", " \n")], "row 1 .*no message with non-blank content"),
        ([chat("a"), [{"content": "b"}]], "row 1 .*not a {'role', 'content'} chat message"),
        ([["a"], ["b"]], "row 0 .*not a {'role', 'content'} chat message"),
        ([1, 2], "row 0 .*of type int, not text or a list of chat messages"),
        ([{"text": "a"}], "row 0 .*not text or a list of chat messages"),
    ],
)
def test_check_prompt_dataset_names_the_row_and_the_fix(prompts, match):
    dataset = Dataset.from_list([{"prompt": p} for p in prompts]) if prompts else Dataset.from_dict({"prompt": []})
    with pytest.raises(ValueError, match=match) as info:
        check_prompt_dataset("train_dataset", dataset)
    if prompts:
        assert "`train_dataset`" in str(info.value) and "fix or remove such rows" in str(info.value)


def test_check_prompt_dataset_counts_rows_after_select_and_shuffle():
    dataset = Dataset.from_dict({"prompt": ["a", "", "b", " "]})
    with pytest.raises(ValueError, match=r"1 unusable prompt\(s\); the first is row 1 \(0-based\)"):
        check_prompt_dataset("train_dataset", dataset.select([2, 1, 0]))
    with pytest.raises(ValueError, match="2 unusable"):
        check_prompt_dataset("train_dataset", dataset.shuffle(seed=0))


def test_check_prompt_dataset_columns():
    with pytest.raises(ValueError, match="`eval_dataset` has no 'prompt' column"):
        check_prompt_dataset("eval_dataset", Dataset.from_dict({"question": ["a"]}))
    with pytest.raises(ValueError, match="no 'prompt' column"):
        check_prompt_dataset("train_dataset", Dataset.from_dict({"question": ["a"]}).to_iterable_dataset())
    # without needs_prompt (environments build their own prompts) only emptiness is checked
    check_prompt_dataset("train_dataset", Dataset.from_dict({"question": [""]}), needs_prompt=False)
    with pytest.raises(ValueError, match="`train_dataset` is empty"):
        check_prompt_dataset("train_dataset", Dataset.from_dict({"question": []}), needs_prompt=False)
