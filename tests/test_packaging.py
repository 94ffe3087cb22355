"""The wheel and the sdist build from the checkout and carry what a `pip install` needs: the metadata (name, version,
dependencies with TRL's pin, the extras, classifiers, project URLs), the console script, and the shipped base model."""

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_wheel_metadata_and_contents(dist):
    (wheel,) = dist.glob("trl_powerflow-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(meta_name).decode())
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert meta["Name"] == "trl-powerflow" and meta["Version"]
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("trl") for r in requires) and any(r.startswith("peft") for r in requires)
    assert {"tensorboard", "trackio", "test", "vllm"} <= set(meta.get_all("Provides-Extra"))
    assert any("tensorboard" in r and 'extra == "tensorboard"' in r for r in requires)
    assert any(c.startswith("License ::") for c in meta.get_all("Classifier"))
    assert any("arxiv.org/abs/2603.18363" in u for u in meta.get_all("Project-URL"))
    assert "trl-powerflow = trl_powerflow.cli:main" in entry_points
    base = "trl_powerflow/assets/digit_chain_base/"
    assert {base + f for f in ("model.safetensors", "config.json", "tokenizer.json")} <= names
    assert "trl_powerflow/py.typed" in names and not [n for n in names if n.startswith("tests/")]


def test_sdist_holds_the_sources_and_the_base(dist):
    (sdist,) = dist.glob("trl_powerflow-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {name.split("/", 1)[1] for name in t.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "trl_powerflow/trainer.py"} <= names
    assert "trl_powerflow/assets/digit_chain_base/model.safetensors" in names
