"""Every command line in the README and the user guide (`bash` blocks) parses with its command's own parser: the
`trl-powerflow` commands, `python scripts/<name>.py`, `accelerate launch ... scripts/train.py` and the examples.
Placeholders (`<recipe>`, `HOST0`, `$((N*G))`) are filled with real values first. Seen to fail on a misspelled
option in a doc command (`--eval_evry`)."""

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "guide.md"]
SHIMS = {"train.py": "train", "evaluate.py": "evaluate", "compare.py": "compare", "run_experiment.py": "experiment",
         "bupo_compare.py": "bupo-compare", "power_sampling.py": "power-sampling"}  # fmt: skip
FILL = {"<recipe>": "scripts/recipes/tiny_cpu.yaml", "<base>": "Qwen/Qwen2.5-Math-1.5B", "HOST0": "127.0.0.1",
        "$((N*G))": "2", "--num_machines N": "--num_machines 1", "--machine_rank R": "--machine_rank 0"}  # fmt: skip


def command_lines():
    lines = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s#.*$", "", line).strip()
                for part in line.split("&&"):
                    for old, new in FILL.items():
                        part = part.replace(old, new)
                    lines.append((doc.name, part.strip()))
    return lines


def to_command(tokens):
    """(command, args) for a line that runs one of the package's commands or examples, else None."""
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # OMP_NUM_THREADS=1 ...
        tokens = tokens[1:]
    if tokens[:1] == ["trl-powerflow"] and len(tokens) > 1:
        return tokens[1], tokens[2:]
    if tokens[:2] == ["accelerate", "launch"]:
        scripts = [i for i, t in enumerate(tokens) if t.endswith(".py")]
        return to_command(["python", *tokens[scripts[0] :]]) if scripts else None
    if tokens and tokens[0] in ("python", "python3") and len(tokens) > 1:
        script = tokens[1]
        if script.startswith("scripts/examples/"):
            return "example", tokens[2:]
        if script.startswith("scripts/") and Path(script).name in SHIMS:
            return SHIMS[Path(script).name], tokens[2:]
    return None


CASES = [(doc, line) for doc, line in command_lines() if line and to_command(shlex.split(line))]


def test_the_docs_hold_commands():
    commands = {to_command(shlex.split(line))[0] for _, line in CASES}
    assert {"train", "evaluate", "compare", "experiment", "example"} <= commands, commands


@pytest.mark.parametrize(("doc", "line"), CASES, ids=[f"{d}:{i}" for i, (d, _) in enumerate(CASES)])
def test_doc_command_parses(doc, line, monkeypatch):
    monkeypatch.chdir(REPO)
    command, args = to_command(shlex.split(line))
    if command == "train":
        from trl_powerflow.cli import train

        train.parse(args)
    elif command == "example":
        from trl import ModelConfig, ScriptArguments, TrlParser

        from trl_powerflow import PowerFlowConfig

        TrlParser((ScriptArguments, PowerFlowConfig, ModelConfig)).parse_args_into_dataclasses(args=args)
    else:
        from trl_powerflow import cli

        module = cli.command_module(command)
        parser = module.make_parser()
        parser.parse_args(args)
