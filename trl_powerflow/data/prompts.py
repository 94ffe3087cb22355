"""Prompt datasets from a hub id, a local `datasets` directory or a local JSON/JSONL/CSV/Parquet file, and the checks
that a prompt dataset can feed generation."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

__all__ = ["check_prompt_dataset", "edit_prompt", "held_out_prompts", "load_prompt_dataset", "load_split"]

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_PROMPT_FORMAT = (
    "Every prompt must be non-blank text or a non-empty list of {'role', 'content'} chat messages with some "
    "non-blank content"
)


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
    plain-text prompts into a single user message, so that the model's chat template is applied. Every prompt is
    checked (`check_prompt_dataset`): a bad row raises a ValueError naming it.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"`max_samples` must be >= 1 (or None for every row), got {max_samples}.")
    dataset = load_split(name_or_path, config, split)
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
        raise ValueError(f"Dataset {name_or_path!r} (split {split!r}) is empty: use a file or split with prompts.")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    is_file = os.path.isfile(name_or_path)
    check_prompt_dataset(name_or_path if is_file else f"{name_or_path} (split {split})", dataset)
    if as_chat and isinstance(dataset[0]["prompt"], str):
        dataset = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    if prompt_suffix or system_prompt:
        dataset = dataset.map(lambda row: {"prompt": edit_prompt(row["prompt"], prompt_suffix, system_prompt)})
    return dataset


def held_out_prompts(
    name_or_path: str | None,
    max_samples: int | None = None,
    *,
    tiny_seed: int = 1,
    prompt_suffix: str | None = None,
    system_prompt: str | None = None,
    **load_kwargs,
) -> list[dict]:
    """Evaluation rows: those of the prompt dataset `name_or_path` (`load_prompt_dataset` with `load_kwargs`), or,
    when it is None, the embedded arithmetic prompts (`toys.tiny_models.tiny_prompt_dataset`: `max_samples` or 16
    of them, seed `tiny_seed`), with the same prompt edits."""
    if name_or_path is not None:
        dataset = load_prompt_dataset(
            name_or_path, prompt_suffix=prompt_suffix, system_prompt=system_prompt, max_samples=max_samples,
            **load_kwargs,
        )  # fmt: skip
        return [dict(row) for row in dataset]
    from ..toys.tiny_models import tiny_prompt_dataset

    rows = [dict(row) for row in tiny_prompt_dataset(n=max_samples or 16, seed=tiny_seed)]
    if prompt_suffix or system_prompt:
        for row in rows:
            row["prompt"] = edit_prompt(row["prompt"], prompt_suffix, system_prompt)
    return rows


def check_prompt_dataset(name: str, dataset, needs_prompt: bool = True) -> None:
    """Raise a ValueError naming `name`, the first bad row and the fix when `dataset` cannot feed generation.

    A `datasets.Dataset` must have rows and (with `needs_prompt`) a 'prompt' column whose every value is non-blank
    text or a non-empty list of chat messages with some non-blank content; only that column is read, as Arrow arrays.
    Other datasets (e.g. `IterableDataset`) are only checked for the column, when their columns are known.
    """
    if dataset is None:
        return
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: it needs at least one prompt to generate completions from.")
    if not needs_prompt:
        return
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"`{name}` has no 'prompt' column (columns: {columns}). Rename the column holding the prompts to "
            "'prompt' (plain text or a list of chat messages)."
        )
    if not isinstance(dataset, Dataset):
        return
    bad = _bad_dataset_rows(dataset)
    if bad:
        raise ValueError(
            f"`{name}` has {len(bad)} unusable prompt(s); the first is row {bad[0]} (0-based): the prompt "
            f"{_prompt_problem(dataset[bad[0]]['prompt'])}. {_PROMPT_FORMAT}: fix or remove such rows."
        )


def _bad_dataset_rows(dataset: Dataset) -> list[int]:
    """Sorted positions of the rows of `dataset` with an unusable prompt. The backing Arrow table is read chunk by
    chunk; a select/shuffle indices mapping is then applied to the (few) bad rows, not to the whole column."""
    bad, offset = [], 0
    for chunk in dataset.data.column("prompt").chunks:
        bad += [offset + i for i in _bad_rows(chunk)]
        offset += len(chunk)
    indices = getattr(dataset, "_indices", None)  # None: the dataset's rows are the table's rows
    if not bad or indices is None:
        return bad
    return pc.indices_nonzero(pc.is_in(indices.column(0), value_set=pa.array(bad, pa.uint64()))).to_pylist()


def _bad_rows(column: pa.Array) -> list[int]:
    """Indices of the rows of an Arrow prompt column that `_prompt_problem` rejects (vectorised for plain text and
    text-content messages)."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0).fill_null(True)
        return pc.indices_nonzero(blank).to_pylist()
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    item = kind.value_type if is_list else None
    if (
        item is not None
        and pa.types.is_struct(item)
        and {"role", "content"} <= {item.field(i).name for i in range(item.num_fields)}
        and pa.types.is_string(item.field("content").type)
    ):
        messages = pc.list_flatten(column)
        rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        text = pc.utf8_trim_whitespace(pc.struct_field(messages, "content"))
        filled = pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False) > 0
        no_role = pc.is_null(pc.struct_field(messages, "role")).to_numpy(zero_copy_only=False)
        ok = column.is_valid().to_numpy(zero_copy_only=False).copy()
        has_content = np.zeros(len(column), dtype=bool)
        has_content[rows[filled]] = True
        ok &= has_content
        ok[rows[no_role]] = False
        return np.flatnonzero(~ok).tolist()
    return [i for i, prompt in enumerate(column.to_pylist()) if _prompt_problem(prompt) is not None]


def _prompt_problem(prompt) -> str | None:
    """What is wrong with one prompt (None when it is usable)."""
    shown = repr(prompt) if len(repr(prompt)) <= 80 else repr(prompt)[:77] + "..."
    if prompt is None:
        return "is missing (null)"
    if isinstance(prompt, str):
        return None if prompt.strip() else f"is blank ({shown})"
    if not isinstance(prompt, list):
        return f"is {shown}, of type {type(prompt).__name__}, not text or a list of chat messages"
    if not prompt:
        return "is an empty list of messages"
    for j, message in enumerate(prompt):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message) or message["role"] is None:
            return f"has message {j} = {message!r}, which is not a {{'role', 'content'}} chat message"
    if not any(_has_text(message["content"]) for message in prompt):
        return f"has no message with non-blank content ({shown})"
    return None


def _has_text(content) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    if isinstance(content, list):  # multimodal content parts: any non-text part, or a non-blank text part
        return any(
            not isinstance(part, dict) or part.get("type") != "text" or _has_text(part.get("text")) for part in content
        )
    return False


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


def load_split(name_or_path, config, split):
    """One split of a hub id, a `datasets` directory (`save_to_disk`, or data files) or a local JSON/JSONL/CSV/Parquet
    file, as a `Dataset`; a missing, empty or unreadable source raises one error that says what to pass instead."""
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
        return _load_named(name_or_path, config, split)
    extension = os.path.splitext(name_or_path)[1].lower()
    if extension in _FILE_BUILDERS:
        return _load_file(name_or_path, _FILE_BUILDERS[extension])
    if os.path.isfile(name_or_path):
        raise ValueError(
            f"Dataset file {name_or_path!r} has an unsupported extension {extension!r}: use one of "
            f"{sorted(_FILE_BUILDERS)} or a `datasets` directory."
        )
    if name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"Dataset path {name_or_path!r} does not exist: check the path.")
    return _load_named(name_or_path, config, split)


def _load_named(name_or_path, config, split):
    """`load_dataset` of a hub id or a directory of data files; "not found" errors say what to pass instead."""
    try:
        return load_dataset(name_or_path, config, split=split)
    except (FileNotFoundError, ConnectionError) as error:  # incl. DatasetNotFoundError, EmptyDatasetError
        raise FileNotFoundError(
            f"Cannot load dataset {name_or_path!r} ({type(error).__name__}: {error}). Pass a local "
            f"{'/'.join(sorted(_FILE_BUILDERS))} file, a directory of such files or of `save_to_disk`, or a hub "
            "dataset id."
        ) from None


def _load_file(path, builder):
    """Load a local data file; an empty or unreadable file raises one ValueError that says what is wrong in it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Dataset file {path!r} does not exist: check the path.")
    example = '{"prompt": "What is 2 + 3?"}'
    if _is_blank_file(path):
        raise ValueError(
            f"Dataset file {path!r} is empty: it needs at least one prompt, e.g. one JSON line per row such as "
            f"{example}."
        )
    try:
        return load_dataset(builder, data_files=path, split="train")
    except Exception as error:  # datasets and pyarrow raise many types here (StopIteration, ArrowInvalid, ...)
        reason = _json_lines_problem(path) if builder == "json" else None
        if reason is None:
            cause = error
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            reason = f"{type(cause).__name__}: {cause}"
        hints = {"json": f"one JSON object per line, e.g. {example}", "csv": "a header line and one row per prompt"}
        hint = hints.get(builder, f"a valid {builder} table")
        raise ValueError(f"Cannot read dataset file {path!r}: {reason}. Fix the file: it must hold {hint}.") from None


def _is_blank_file(path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _json_lines_problem(path) -> str | None:
    """The first line of a JSON-lines file that is not a JSON object, described (None when every line is one)."""
    if _first_char_is(path, b"["):  # one JSON array: datasets' own error says more
        return None
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    return f"line {number} is not valid JSON ({error.msg} at column {error.colno})"
                if not isinstance(row, dict):
                    kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(row), "a number or null")
                    return f"line {number} is {kind}, not a JSON object"
    except UnicodeDecodeError as error:
        return f"it is not UTF-8 text ({error})"
    return None


def _first_char_is(path, char: bytes) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return chunk.lstrip().startswith(char)
    return False
