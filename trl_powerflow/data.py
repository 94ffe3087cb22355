"""Prompt datasets from a hub id, a local `datasets` directory or a local JSON/JSONL/CSV/Parquet file."""

import os

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_prompt_dataset(
    name_or_path: str,
    config: str | None = None,
    split: str = "train",
    prompt_column: str = "prompt",
    prompt_suffix: str | None = None,
    system_prompt: str | None = None,
    max_samples: int | None = None,
    as_chat: bool = False,
) -> Dataset:
    """Load one split and return it with a `prompt` column (plain text or a list of chat messages).

    `prompt_suffix` is appended to the (last user message of the) prompt, e.g. a "put the answer in \\boxed{}"
    instruction; `system_prompt` is prepended as a system message (or as text for plain prompts); `as_chat` turns
    plain-text prompts into a single user message, so that the model's chat template is applied.
    """
    dataset = _load_split(name_or_path, config, split)
    if prompt_column not in dataset.column_names:
        raise ValueError(
            f"Dataset {name_or_path!r} (split {split!r}) has no column {prompt_column!r}; its columns are "
            f"{dataset.column_names}. Pass the column holding the prompts with `--prompt_column`."
        )
    if prompt_column != "prompt":
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(prompt_column, "prompt")
    if len(dataset) == 0:
        raise ValueError(f"Dataset {name_or_path!r} (split {split!r}) is empty.")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    _check_prompt(dataset[0]["prompt"], name_or_path)
    if as_chat and isinstance(dataset[0]["prompt"], str):
        dataset = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    if prompt_suffix or system_prompt:
        dataset = dataset.map(lambda row: {"prompt": edit_prompt(row["prompt"], prompt_suffix, system_prompt)})
    return dataset


def edit_prompt(prompt, suffix: str | None = None, system_prompt: str | None = None):
    """Append `suffix` to the prompt's last user turn and prepend `system_prompt`."""
    if isinstance(prompt, str):
        prompt = prompt + (suffix or "")
        return f"{system_prompt}\n{prompt}" if system_prompt else prompt
    messages = [dict(m) for m in prompt]
    if suffix:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = messages[last_user]["content"] + suffix
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _load_split(name_or_path, config, split):
    if os.path.isdir(name_or_path):
        is_saved = any(
            os.path.isfile(os.path.join(name_or_path, f))
            for f in ("dataset_dict.json", "dataset_info.json", "state.json")
        )
        if is_saved:
            loaded = load_from_disk(name_or_path)
            if isinstance(loaded, DatasetDict):
                if split not in loaded:
                    raise ValueError(
                        f"Dataset {name_or_path!r} has no split {split!r}; its splits are {list(loaded)}."
                    )
                return loaded[split]
            return loaded
        return load_dataset(name_or_path, config, split=split)
    extension = os.path.splitext(name_or_path)[1].lower()
    if extension in _FILE_BUILDERS:
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"Dataset file {name_or_path!r} does not exist.")
        return load_dataset(_FILE_BUILDERS[extension], data_files=name_or_path, split="train")
    if name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"Dataset path {name_or_path!r} does not exist.")
    return load_dataset(name_or_path, config, split=split)


def _check_prompt(prompt, name):
    if isinstance(prompt, str):
        return
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt)
    ):
        return
    raise ValueError(
        f"Prompts of dataset {name!r} must be strings or lists of {{'role', 'content'}} messages, got {prompt!r}."
    )
