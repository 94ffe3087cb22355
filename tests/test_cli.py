"""The installed `trl-powerflow` command: its help lists every command, `python -m trl_powerflow` is the same command,
every command's `--help` works, the BuPO options show only for the BuPO trainers, an unknown command fails clearly,
the console script trains from a recipe, and scripts/ holds only thin shims over `trl_powerflow.cli`."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_powerflow import cli

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "scripts" / "recipes" / "tiny_cpu.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "trl-powerflow"
# scripts/<file> -> the command it runs
SHIMS = {
    "train.py": "train",
    "evaluate.py": "evaluate",
    "compare.py": "compare",
    "bupo_compare.py": "bupo_compare",
    "run_experiment.py": "experiment",
    "pretrain_tiny_base.py": "pretrain_base",
    "make_tiny_model.py": "make_tiny_model",
    "plot_layer_entropy.py": "plot_layer_entropy",
    "power_sampling.py": "power_sampling",
}


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def run(argv, timeout=120, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=timeout, **kwargs)


def console_script() -> str:
    if not CONSOLE_SCRIPT.is_file():
        pytest.fail(f"{CONSOLE_SCRIPT} is missing: reinstall the package (pip install -e .) to create the command.")
    return str(CONSOLE_SCRIPT)


def help_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


def test_console_script_help_lists_every_command(tmp_path):
    result = run([console_script(), "--help"], cwd=tmp_path)  # outside the repository: the installed package
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: trl-powerflow <command>")
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ") and line.split()]
    assert [name for name in listed if name in cli.COMMANDS] == list(cli.COMMANDS)
    assert set(cli.COMMANDS) == {
        "train", "evaluate", "compare", "bupo-compare", "experiment", "pretrain-base", "make-tiny-model",
        "plot-layer-entropy", "power-sampling",
    }  # fmt: skip
    assert "torch" not in run([sys.executable, "-X", "importtime", "-m", "trl_powerflow", "--help"]).stderr


def test_python_dash_m_is_the_same_command():
    result = run([sys.executable, "-m", "trl_powerflow", "--help"])
    assert result.returncode == 0, result.stderr
    assert all(f"  {name} " in result.stdout for name in cli.COMMANDS)
    version = run([sys.executable, "-m", "trl_powerflow", "--version"])
    assert version.returncode == 0 and version.stdout.startswith("trl-powerflow ")


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(capsys, command):
    text = help_of(capsys, command)
    assert text.startswith(f"usage: trl-powerflow {command}"), text[:200]
    assert "--" in text


def test_bupo_options_show_only_for_the_bupo_trainers(capsys):
    plain = help_of(capsys, "train")
    assert "--bupo_layer" not in plain and "--bupo_steps" not in plain
    assert "--trainer {powerflow,grpo,bupo_powerflow,bupo_grpo}" in plain and "--config RECIPE.yaml" in plain
    assert "--bupo_layer" not in help_of(capsys, "train", "--trainer", "grpo")
    for trainer in ("bupo_powerflow", "bupo_grpo"):
        text = help_of(capsys, "train", "--trainer", trainer)
        assert "--bupo_layer BUPO_LAYER" in text and "--bupo_steps BUPO_STEPS" in text, trainer
    assert "--alpha ALPHA" in help_of(capsys, "train", "--trainer", "bupo_powerflow")


def test_bupo_options_select_the_bupo_trainer(capsys, tmp_path):
    """Given to a plain trainer (as older commands and recipes do), the BuPO options select its BuPO variant."""
    from trl_powerflow.bupo import BuPOGRPOConfig, BuPOPowerFlowConfig
    from trl_powerflow.cli import train

    script_args, training_args, _ = train.parse(["--config", str(RECIPE), "--bupo_layer", "1", "--bupo_steps", "3"])
    assert script_args.trainer == "bupo_powerflow" and type(training_args) is BuPOPowerFlowConfig
    assert (training_args.bupo_layer, training_args.bupo_steps) == (1, 3)
    assert "are BuPO options: training with --trainer bupo_powerflow" in capsys.readouterr().out
    recipe = tmp_path / "bupo.yaml"
    recipe.write_text((REPO / "scripts" / "recipes" / "tiny_cpu_grpo.yaml").read_text() + "bupo_layer: 2\n")
    script_args, training_args, _ = train.parse(["--config", str(recipe)])
    assert script_args.trainer == "bupo_grpo" and type(training_args) is BuPOGRPOConfig
    assert training_args.bupo_layer == 2
    script_args, training_args, _ = train.parse(["--config", str(RECIPE)])
    assert script_args.trainer == "powerflow" and not hasattr(training_args, "bupo_layer")


def test_unknown_command_fails_clearly(capsys):
    assert cli.main(["trian", "--config", "x.yaml"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'trian'. Did you mean 'train'?" in error and "bupo-compare" in error
    assert cli.main([]) == 2 and "usage: trl-powerflow" in capsys.readouterr().err
    result = run([console_script(), "nonsense"])
    assert result.returncode == 2 and "unknown command 'nonsense'" in result.stderr


@pytest.mark.slow
def test_console_script_trains_from_a_recipe(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    argv = [console_script(), "train", "--config", "scripts/recipes/tiny_cpu.yaml", "--model_name_or_path"]
    argv += [tiny_model_dir, "--max_steps", "1", "--output_dir", str(out), "--save_strategy", "no"]
    argv += ["--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8"]
    result = run(argv, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Saved the trained model to" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "log_z_head.safetensors").is_file()


def test_scripts_are_thin_shims():
    assert sorted(path.name for path in (REPO / "scripts").glob("*.py")) == sorted(SHIMS)
    for name, module in SHIMS.items():
        source = (REPO / "scripts" / name).read_text()
        assert len(source.splitlines()) <= 10, name
        imports = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)]
        assert [node.module for node in imports] == [f"trl_powerflow.cli.{module}"], name
        assert cli.COMMANDS[module.replace("_", "-")][0] == module


def test_command_modules_stay_thin():
    for path in (REPO / "trl_powerflow" / "cli").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name


def test_train_help_is_grouped_powerflow_first(capsys):
    """`train --help`: a one-line usage, then PowerFlow's options, script/data, model/PEFT, GRPO/Trainer (it was 1,500
    ungrouped lines with PowerFlow's options near the end); `--resume_from_checkpoint` lists `last`."""
    text = help_of(capsys, "train")
    titles = [line for line in text.splitlines() if line.endswith("options:") or line.endswith("):")]
    assert [t.split(" ")[0] for t in titles if not t.startswith(" ")][1:5] == ["PowerFlow", "script", "model", "GRPO"]
    assert text.index("--alpha") < text.index("--dataset_name") < text.index("--lora_r") < text.index("--beta")
    assert text.splitlines()[0].startswith("usage: ") and len(text.splitlines()[0]) < 120
    resume = text[text.index("--resume_from_checkpoint") :][:400]
    assert "`last`" in resume


@pytest.mark.parametrize(
    ("extra", "hint"),
    [(["--learnin_rate", "1e-4"], "Did you mean --learning_rate?"), (["--config", "{recipe}"], "Did you mean alpha?")],
    ids=["flag", "yaml_key"],
)
def test_errors_are_one_line_with_a_suggestion(tmp_path, extra, hint):
    """A misspelled option (flag or recipe key): exit status 2 and one `error:` line with the close option, no
    traceback; `--debug` shows the traceback."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + "alhpa: 2.0\n")
    argv = [
        console_script(),
        "train",
        "--output_dir",
        str(tmp_path / "out"),
        *[a.format(recipe=recipe) for a in extra],
    ]
    result = run(argv)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and hint in errors[0] and "Traceback" not in result.stderr, result.stderr[-2000:]
    debug = run([*argv, "--debug"])
    assert debug.returncode != 0 and "Traceback" in debug.stderr
