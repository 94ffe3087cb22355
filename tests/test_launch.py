"""`accelerate launch` of scripts/train.py with 2 real CPU processes: DDP, DeepSpeed ZeRO-2/3 (also with LoRA), GRPO
through the same script, 1- vs 2-process equivalence, kill-and-resume, and errors raised before training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from trl_powerflow.baselines import REWARD_FUNCS
from trl_powerflow.training.log_z_head import LogZHead

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "scripts" / "train.py"
RECIPE = REPO / "scripts" / "recipes" / "tiny_cpu.yaml"
_PORT = [29700]


def env():
    environ = dict(os.environ)
    environ.update(
        OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false"
    )
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), environ.get("PYTHONPATH", "")])
    return environ


def command(config, args):
    if config is None:
        return [sys.executable, str(TRAIN), *args]
    _PORT[0] += 1
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / config),
        "--main_process_port", str(_PORT[0]),
        str(TRAIN), *args,
    ]  # fmt: skip


def run(config, args, timeout=900):
    result = subprocess.run(command(config, args), env=env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def base_args(model_dir, output_dir, *extra):
    return ["--config", str(RECIPE), "--model_name_or_path", model_dir, "--output_dir", str(output_dir),
            "--max_steps", "2", "--save_steps", "2", "--disable_tqdm", "true", *extra]  # fmt: skip


def history(output_dir, step):
    with open(Path(output_dir) / f"checkpoint-{step}" / "trainer_state.json") as f:
        return [entry for entry in json.load(f)["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def two_process_runs(tiny_model_dir, tmp_path_factory):
    """One PowerFlow run of 2 processes per launcher config, same recipe and seed."""
    root = tmp_path_factory.mktemp("launch")
    runs = {}
    for config in ("cpu_ddp.yaml", "cpu_zero1.yaml", "cpu_zero2.yaml", "cpu_zero3.yaml"):
        output_dir = root / config.removesuffix(".yaml")
        result = run(config, base_args(tiny_model_dir, output_dir))
        runs[config] = (output_dir, result)
    return runs


@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "cpu_zero1.yaml", "cpu_zero2.yaml", "cpu_zero3.yaml"])
def test_two_process_powerflow_runs(two_process_runs, config):
    output_dir, result = two_process_runs[config]
    assert "processes=2" in result.stdout
    for name in ("model.safetensors", "log_z_head.safetensors", "checkpoint-2/log_z_head.safetensors"):
        assert (output_dir / name).is_file(), name
    head = load_file(output_dir / "log_z_head.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in head.values())
    logs = history(output_dir, 2)
    assert len(logs) == 2 and all(entry["loss"] == entry["loss"] for entry in logs)
    assert "Traceback" not in result.stderr  # clean shutdown, no abort at exit


def head_outputs(path, hidden_size, features):
    """log Z' of a saved head on fixed features, in float64 (the head itself computes in float32)."""
    head = LogZHead(hidden_size)
    head.load_state_dict(load_file(path))
    with torch.no_grad():
        return head.eval()(features).double()


def test_ddp_and_zero_stages_agree(two_process_runs, tiny_model_dir):
    """Same global batch and seed: the step-1 loss, grad norm and log Z' are the same for DDP and ZeRO-1/2/3, and so
    is the head after training, compared through its outputs on fixed features.

    What legitimately differs between the engines: the order of the gradient reduction (DDP buckets vs DeepSpeed's
    reduce-scatter of flat fp32 buffers), the grouping of the grad norm's sum of squares, and the optimizer step
    (AdamW on DeepSpeed's flat fp32 partitions instead of per-parameter tensors): float32 rounding, ~1e-7 relative.

    Step 1, rel 1e-5: loss, log Z', residual spread and log-probs come from one forward on the same weights (ZeRO-3
    gathers identical values) plus a reduction of 2 values; the grad norm sums ~5e4 squares in another grouping,
    relative error <= ~log2(n) * 6e-8 ~ 1e-6. Measured: identical, grad norm within 1.2e-7.

    After training, raw parameters are the wrong quantity. Adam moves an element by lr * m/(sqrt(v)+eps), about lr
    whatever the gradient's size, so where the gradient is ~0 its rounding noise sets the move (up to lr per step,
    2 * lr * steps between two runs). The head has such elements by construction: its hidden layers get exactly 0
    gradient at step 1 (the output layer starts at 0), tiny ones at step 2 (ZeRO-3 put one 4.1e-5 away from DDP,
    relative 2.5e-4), and a tolerance sound for them, 2 * lr * steps = 4e-2, could not tell a trained head from an
    untrained one. The outputs separate noise from signal, in two parts:
    - prompt-dependent part (outputs minus their mean over the features) = w . (h(f) - mean h): hidden-layer noise
      reaches it only through the output weights w, themselves <= lr * steps (they start at 0), and moves each of the
      d unit-scale (LayerNorm'ed) features h by <= ~lr * steps: second order, atol = d * (lr * steps)^2 = 1.3e-2,
      against a learned part of ~2e-1 (checked > 4x the tolerance, so an untrained or desynchronised head fails).
      Measured: 1.1e-5 (ZeRO-3), 0 (ZeRO-1/2).
    - constant (mean output) = out.bias + offset. out.bias's gradient is twice the mean residual, which the
      first-batch initialisation of log Z' sets to 0 up to a float32 residue: its first Adam step is +-lr, with the
      residue's sign. The re-centring after each step (a forward-only quantity) absorbs that into `offset`; only the
      last step's out.bias move (<= lr, either sign) is left: atol = 2 * lr = 2e-2. Measured: 0.
    lr is the head's learning rate (`log_z_learning_rate`); the policy's (1e-4) adds differences 100x smaller.
    """
    first = {config: history(out, 2)[0] for config, (out, _) in two_process_runs.items()}
    reference = first["cpu_ddp.yaml"]
    for config, entry in first.items():
        for key in ("loss", "grad_norm", "powerflow/log_z_mean", "powerflow/residual_std",
                    "powerflow/policy_logp_per_token"):  # fmt: skip
            assert entry[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), (config, key)

    lr, steps = yaml.safe_load(RECIPE.read_text())["log_z_learning_rate"], 2
    hidden_size = json.loads((Path(tiny_model_dir) / "config.json").read_text())["hidden_size"]
    features = torch.randn(256, hidden_size, generator=torch.Generator().manual_seed(0))
    outputs = {
        config: head_outputs(out / "log_z_head.safetensors", hidden_size, features)
        for config, (out, _) in two_process_runs.items()
    }
    shape_atol, constant_atol = hidden_size * (lr * steps) ** 2, 2 * lr
    ddp = outputs["cpu_ddp.yaml"]
    assert (ddp - ddp.mean()).abs().max() > 4 * shape_atol  # the head learned a prompt-dependent part
    for config, out in outputs.items():
        shape_error = ((out - out.mean()) - (ddp - ddp.mean())).abs().max().item()
        assert shape_error <= shape_atol, (config, shape_error)
        assert abs(out.mean() - ddp.mean()).item() <= constant_atol, config


def test_grpo_through_the_same_script(tiny_model_dir, tmp_path):
    result = run(
        "cpu_zero2.yaml",
        base_args(tiny_model_dir, tmp_path, "--trainer", "grpo", "--reward_funcs", "launch_helpers:slow_zero_reward"),
    )
    assert "trainer=grpo processes=2" in result.stdout
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "log_z_head.safetensors").exists()


def test_zero3_with_lora(tiny_model_dir, tmp_path):
    run(
        "cpu_zero3.yaml",
        base_args(tiny_model_dir, tmp_path, "--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"),
    )
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "log_z_head.safetensors").is_file()


def equal_length_prompts(path):
    """Prompts of identical token length, so 1- and 2-process batches carry the same padding."""
    rows = [{"prompt": [{"role": "user", "content": f"What is {a} + {b}? Answer in \\boxed{{}}."}]}
            for a, b in zip(range(10, 42), range(50, 82))]  # fmt: skip
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def test_one_and_two_processes_agree(tiny_model_dir, tmp_path):
    """Same global batch (16 completions) and seed, greedy decoding so both see the same completions, no dropout.

    Tolerance: relative 1e-5 on the step-1 loss, log Z' and residual spread, and 1e-6 absolute on all parameters after
    the first optimizer step. The runs do the same float32 arithmetic except the order of the cross-process gradient
    mean and of the metric reductions, which moves results at float32 rounding level (~1e-7 relative). Later steps are
    not compared element-wise: Adam divides by sqrt(v), so parameters whose gradients are ~0 (here the head's hidden
    layers, whose gradient is 0 while its zero-initialised output layer is 0) turn rounding noise into lr-sized moves.
    One such parameter moves at step 1 already: the head's out.bias, whose gradient is twice the mean residual, which
    the first-batch initialisation of log Z' sets to 0 up to a float32 residue whose sign the summation order can
    flip; Adam's first step moves it by +-lr either way, so it is compared within 2 * lr (the head's learning rate),
    and so is step 2's log Z', computed by the head after that step.
    """
    data = equal_length_prompts(tmp_path / "prompts.jsonl")
    common = ["--dataset_name", data, "--num_generations", "4", "--generation_kwargs", '{"do_sample": false}',
              "--max_completion_length", "12", "--disable_dropout", "true", "--save_steps", "1"]  # fmt: skip
    run(None, base_args(tiny_model_dir, tmp_path / "one", *common, "--per_device_train_batch_size", "16"))
    run("cpu_ddp.yaml", base_args(tiny_model_dir, tmp_path / "two", *common, "--per_device_train_batch_size", "8"))
    one, two = history(tmp_path / "one", 2), history(tmp_path / "two", 2)
    head_lr = yaml.safe_load(RECIPE.read_text())["log_z_learning_rate"]
    for key in ("loss", "powerflow/log_z_mean", "powerflow/residual_std", "powerflow/policy_logp_per_token"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-5, abs=1e-7), key
    # Step 2's log Z' is the head after one step, out.bias's +-lr included (re-centring absorbs it only afterwards).
    assert two[1]["powerflow/log_z_mean"] == pytest.approx(one[1]["powerflow/log_z_mean"], rel=1e-5, abs=2 * head_lr)
    for name in ("model.safetensors", "log_z_head.safetensors"):
        a = load_file(tmp_path / "one" / "checkpoint-1" / name)
        b = load_file(tmp_path / "two" / "checkpoint-1" / name)
        for key in a:
            atol = 2 * head_lr if (name, key) == ("log_z_head.safetensors", "out.bias") else 1e-6
            torch.testing.assert_close(b[key].float(), a[key].float(), rtol=0, atol=atol, msg=key)


def test_kill_and_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    extra = ["--max_steps", "6", "--reward_funcs", "launch_helpers:slow_zero_reward"]
    run("cpu_ddp.yaml", base_args(tiny_model_dir, tmp_path / "full", *extra))

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command("cpu_ddp.yaml", base_args(tiny_model_dir, killed, *extra)),
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    marker = killed / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the checkpoint finish writing its last files
    assert process.poll() is None, "the run ended before it could be killed"
    # torchrun starts its workers in sessions of their own: kill the whole process tree, workers first.
    tree = psutil.Process(process.pid).children(recursive=True)
    for child in tree:
        child.kill()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree, timeout=30)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in tree)
    assert not (killed / "checkpoint-6").exists() and not (killed / "model.safetensors").exists()
    for late in killed.glob("*checkpoint-*"):
        if late.name != "checkpoint-2":  # keep the state "stopped after checkpoint 2"
            shutil.rmtree(late)

    run("cpu_ddp.yaml", base_args(tiny_model_dir, killed, *extra, "--resume_from_checkpoint", "last"))
    for name in ("model.safetensors", "log_z_head.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(killed / name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=f"{name}:{key}")


def load_train_module():
    from trl_powerflow.cli import train

    return train


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("no_prompt_column", ValueError, "no column 'prompt'"),
        ("unknown_field", ValueError, "Unknown arguments from config file"),
        ("missing_model", FileNotFoundError, "does not exist"),
        ("unknown_trainer", ValueError, "`trainer` must be one of"),
        ("grpo_without_reward", ValueError, "GRPO needs at least one reward"),
    ],
)
def test_bad_inputs_fail_before_training(tiny_model_dir, tmp_path, case, error, match):
    train = load_train_module()
    output_dir = tmp_path / "out"
    args = ["--config", str(RECIPE), "--model_name_or_path", tiny_model_dir, "--output_dir", str(output_dir)]
    if case == "no_prompt_column":
        data = tmp_path / "data.jsonl"
        data.write_text('{"question": "What is 1 + 1?"}\n')
        args += ["--dataset_name", str(data)]
    elif case == "unknown_field":
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(RECIPE.read_text() + "alhpa: 2.0\n")
        args[1] = str(recipe)
    elif case == "missing_model":
        args[3] = str(tmp_path / "no-such-model")
    elif case == "unknown_trainer":
        args += ["--trainer", "ppo"]
    elif case == "grpo_without_reward":
        recipe = tmp_path / "grpo.yaml"
        grpo = (REPO / "scripts" / "recipes" / "tiny_cpu_grpo.yaml").read_text()
        recipe.write_text("\n".join(line for line in grpo.splitlines() if not line.startswith("reward_funcs")))
        args[1] = str(recipe)
    with pytest.raises(error, match=match):
        train.main(args)
    assert not output_dir.exists() or not any(output_dir.glob("checkpoint-*"))


def test_every_recipe_parses_into_a_valid_config():
    """Recipes for GPUs cannot run here; each must still parse into a valid config (bf16 switched off on this CPU)."""
    train = load_train_module()
    recipes = sorted((REPO / "scripts" / "recipes").glob("*.yaml"))
    assert len(recipes) >= 6
    for recipe in recipes:
        script_args, training_args, model_args = train.parse(["--config", str(recipe), "--bf16", "false"])
        assert script_args.trainer in ("powerflow", "grpo")
        if script_args.trainer == "powerflow":
            assert training_args.alpha > 0
        else:
            assert script_args.reward_funcs
        assert set(script_args.reward_funcs) <= set(REWARD_FUNCS), recipe.name


def test_zero3_resume_restores_policy_and_head(tiny_model_dir, tmp_path):
    """Under ZeRO-3 the head is partitioned with the model; DeepSpeed's checkpoint must bring both back."""
    extra = ["--max_steps", "4"]
    run("cpu_zero3.yaml", base_args(tiny_model_dir, tmp_path / "full", *extra))
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    run("cpu_zero3.yaml", base_args(tiny_model_dir, tmp_path / "resumed", *extra, "--resume_from_checkpoint", "last"))
    keys = ("step", "loss", "grad_norm", "powerflow/log_z_mean")
    resumed, full = history(tmp_path / "resumed", 4), history(tmp_path / "full", 4)
    assert [[e[k] for k in keys] for e in resumed] == [[e[k] for k in keys] for e in full]
    for name in ("model.safetensors", "log_z_head.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "resumed" / name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=f"{name}:{key}")
