"""The README's test command is the one CI runs, and every PowerFlow option is documented in it."""

import dataclasses
from pathlib import Path

from trl import GRPOConfig

from trl_powerflow import PowerFlowConfig

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci_commands) == 1
    assert ci_commands[0].strip() in (REPO / "README.md").read_text()


def test_every_powerflow_option_is_in_the_readme_table():
    readme = (REPO / "README.md").read_text()
    new = {f.name for f in dataclasses.fields(PowerFlowConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
    assert new and all(f"`{name}`" in readme for name in new)


def test_layout_section_names_every_module():
    """The user guide's `## Layout` names every subpackage (`name/`) and every module file of `trl_powerflow/` (so a
    new module fails here until the guide says what it is for)."""
    guide = (REPO / "docs" / "guide.md").read_text()
    layout = guide.split("## Layout", 1)[1].split("\n## ", 1)[0]
    package = REPO / "trl_powerflow"
    missing = [
        f"{path.parent.relative_to(package)}/{path.name}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py" and f"`{path.name}`" not in layout
    ]
    missing += [
        f"{path.name}/"
        for path in sorted(package.iterdir())
        if path.is_dir() and (path / "__init__.py").exists() and f"`{path.name}/`" not in layout
    ]
    assert not missing, f"docs/guide.md ## Layout does not mention: {missing}"


def test_readme_is_scannable():
    """The README stays short (it was 31 KB of prose) and points to the guide for the depth."""
    readme = (REPO / "README.md").read_text()
    assert len(readme) < 14_000 and "docs/guide.md" in readme
    titles = [line for line in readme.splitlines() if line.startswith("## ")]
    assert titles == [
        "## Install",
        "## The two commands",
        "## Swap GRPOTrainer for PowerFlowTrainer",
        "## Launch on one or many machines",
        "## Compare against baselines",
        "## PowerFlowConfig options",
    ]
