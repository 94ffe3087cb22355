"""What `trl-powerflow train` does around the trainer: process-group set-up, checks of the options, the model, the
checkpoint and the datasets to use, the before/after evaluation of `--eval_before_after`, and the teardown.

Each function takes the parsed option objects of the command (`script_args`: `trl_powerflow.cli.train.
TrainScriptArguments`, `training_args`: the trainer's config, `model_args`: `trl.ModelConfig`) and fails, before any
model is loaded, with a message that says what to change.
"""

from __future__ import annotations

import os
import time

TRAINERS = ("powerflow", "grpo", "bupo_powerflow", "bupo_grpo")


def trainer_family(trainer: str) -> str:
    """'grpo' for GRPO and its BuPO variant, else 'powerflow'."""
    return "grpo" if trainer.endswith("grpo") else "powerflow"


def prepare_distributed_environment(argv: list[str]) -> list[str]:
    """Before any config is built, on a machine without a GPU: make `accelerate launch` processes join one gloo group
    (`training.launch_env.join_cpu_process_group`). Returns the argv to parse (with `--ddp_backend gloo` for
    DeepSpeed on CPU unless given)."""
    from ..training.launch_env import join_cpu_process_group

    if join_cpu_process_group() and not any(arg.startswith("--ddp_backend") for arg in argv):
        argv = [*argv, "--ddp_backend", "gloo"]
    return argv


def check_inputs(script_args, training_args) -> str | None:
    """Cheap checks of the options before any data or model is loaded; returns the checkpoint to resume from."""
    from trl_powerflow.baselines import REWARD_FUNCS

    if script_args.max_train_samples is not None and script_args.max_train_samples < 1:
        raise ValueError(
            f"--max_train_samples must be >= 1, got {script_args.max_train_samples}. Leave it unset to train on "
            "every prompt."
        )
    check_demo_inputs(script_args)
    if trainer_family(script_args.trainer) == "grpo" and not script_args.reward_funcs:
        raise ValueError("GRPO needs at least one reward: pass --reward_funcs (e.g. accuracy).")
    for name in script_args.reward_funcs:
        if name not in REWARD_FUNCS and ":" not in name:
            raise ValueError(
                f"Unknown reward {name!r} in --reward_funcs. Allowed names: {sorted(REWARD_FUNCS)}, or an import "
                "string 'package.module:function'."
            )
    return resolve_checkpoint(training_args)


def check_demo_inputs(script_args):
    """The options of --demo and --eval_before_after."""
    from .demo import DEMOS, DIGIT_CHAIN_MAX_EVAL, DIGIT_CHAIN_MAX_TRAIN

    if script_args.demo is not None and script_args.demo not in DEMOS:
        raise ValueError(f"--demo must be one of {list(DEMOS)}, got {script_args.demo!r}.")
    for name in ("eval_prompts", "eval_samples", "eval_prompts_per_batch", "eval_max_new_tokens"):
        value = getattr(script_args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}.")
    if script_args.demo == "digit_chains":
        if script_args.eval_before_after and script_args.eval_prompts > DIGIT_CHAIN_MAX_EVAL:
            raise ValueError(
                f"--demo digit_chains has {DIGIT_CHAIN_MAX_EVAL} held-out prompts (never seen in pretraining or RL); "
                f"--eval_prompts {script_args.eval_prompts} asks for more. Pass at most {DIGIT_CHAIN_MAX_EVAL}."
            )
        train_samples = script_args.max_train_samples
        if script_args.dataset_name is None and train_samples is not None and train_samples > DIGIT_CHAIN_MAX_TRAIN:
            raise ValueError(
                f"--demo digit_chains has {DIGIT_CHAIN_MAX_TRAIN} training prompts kept out of the base's "
                f"pretraining; --max_train_samples {train_samples} asks for more. Pass at most "
                f"{DIGIT_CHAIN_MAX_TRAIN}."
            )


def resolve_checkpoint(training_args) -> str | None:
    """The checkpoint directory of --resume_from_checkpoint ('last' or 'true': the newest one in output_dir)."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint, output_dir = training_args.resume_from_checkpoint, training_args.output_dir
    if checkpoint is None:
        return None
    if checkpoint.lower() in ("true", "last"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {checkpoint}: there is no checkpoint-<step> directory in --output_dir "
                f"{output_dir!r} to resume from. Point --output_dir at the interrupted run, or drop "
                "--resume_from_checkpoint to start a new run."
            )
        return last
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {checkpoint!r} is not a directory. Pass a checkpoint-<step> directory of an "
            "earlier run, or 'last' for the newest one in --output_dir."
        )
    if not os.path.isfile(os.path.join(checkpoint, "trainer_state.json")):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {checkpoint!r} is not a training checkpoint (it has no trainer_state.json). "
            "Pass a checkpoint-<step> directory of an earlier run, or 'last' for the newest one in --output_dir."
        )
    return checkpoint


def resolve_model(script_args, training_args, model_args) -> str:
    """A loadable model id or path; builds the embedded tiny model when none is given. Fails before training."""
    if model_args.model_name_or_path is None and script_args.demo == "digit_chains":
        from .demo import digit_chain_base_path

        return digit_chain_base_path()
    if model_args.model_name_or_path is None:
        from trl_powerflow.toys.tiny_models import save_tiny_model

        with training_args.main_process_first(desc="build the embedded tiny model"):
            return save_tiny_model(script_args.tiny_model_dir)
    name = model_args.model_name_or_path
    from ..training.guards import check_local_model_path

    check_local_model_path(name)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"Cannot load model {name!r}: it is not a local model directory and could not be found on the hub "
            f"({type(error).__name__}: {error})."
        ) from None
    return name


def load_datasets(script_args, training_args):
    """(train dataset, eval dataset or None): the demo's prompts, the embedded arithmetic prompts or --dataset_name."""
    from trl_powerflow.data import load_prompt_dataset
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    eval_dataset = None
    if script_args.dataset_name is None and script_args.demo == "digit_chains":
        from datasets import Dataset

        from .demo import DIGIT_CHAIN_MAX_TRAIN, digit_chain_splits

        train_rows, eval_rows = digit_chain_splits(script_args.max_train_samples or DIGIT_CHAIN_MAX_TRAIN)
        train_dataset = Dataset.from_list(train_rows)
        if training_args.eval_strategy != "no":
            eval_dataset = Dataset.from_list(eval_rows)
        return train_dataset, eval_dataset
    if script_args.dataset_name is None:
        train_dataset = tiny_prompt_dataset(n=script_args.max_train_samples or 64)
        if training_args.eval_strategy != "no":
            eval_dataset = tiny_prompt_dataset(n=16, seed=1)
        return train_dataset, eval_dataset
    common = dict(
        config=script_args.dataset_config,
        prompt_column=script_args.prompt_column,
        prompt_suffix=script_args.prompt_suffix,
        system_prompt=script_args.system_prompt,
        as_chat=script_args.prompt_as_chat,
    )
    train_dataset = load_prompt_dataset(
        script_args.dataset_name,
        split=script_args.dataset_train_split,
        max_samples=script_args.max_train_samples,
        **common,
    )
    if training_args.eval_strategy != "no":
        eval_dataset = load_prompt_dataset(script_args.dataset_name, split=script_args.dataset_test_split, **common)
    return train_dataset, eval_dataset


def trainer_class(trainer: str):
    """The trainer class of `--trainer`."""
    if trainer == "powerflow":
        from trl_powerflow import PowerFlowTrainer

        return PowerFlowTrainer
    if trainer == "grpo":
        from trl import GRPOTrainer

        return GRPOTrainer
    from trl_powerflow.bupo import BuPOGRPOTrainer, BuPOPowerFlowTrainer

    return BuPOPowerFlowTrainer if trainer == "bupo_powerflow" else BuPOGRPOTrainer


def install_layer_entropy(trainer, script_args, training_args, tokenizer, train_dataset, eval_dataset):
    """--layer_entropy_every: log the entropy of every internal layer policy on a fixed probe set of prompts."""
    from trl_powerflow.bupo.logit_lens import LayerEntropyCallback, install_first

    probe = (eval_dataset if eval_dataset is not None else train_dataset)["prompt"]
    callback = LayerEntropyCallback(
        tokenizer,
        list(probe[: script_args.layer_entropy_prompts]),
        every_steps=script_args.layer_entropy_every,
        max_new_tokens=training_args.max_completion_length,
        chat_template_kwargs=training_args.chat_template_kwargs,
    )
    install_first(trainer, callback)


def before_after_rows(script_args) -> list[dict]:
    """The held-out prompts of --eval_before_after: the demo's held-out set, else the test split of the dataset,
    else embedded arithmetic prompts (seed 1, like the embedded evaluation set)."""
    n = script_args.eval_prompts
    if script_args.demo == "digit_chains":
        from .demo import digit_chain_splits

        return digit_chain_splits(num_eval=n)[1]
    from trl_powerflow.data import held_out_prompts

    if script_args.dataset_name is None:  # the embedded prompts, unedited
        return held_out_prompts(None, n)
    return held_out_prompts(
        script_args.dataset_name, n, config=script_args.dataset_config, split=script_args.dataset_test_split,
        prompt_column=script_args.prompt_column, prompt_suffix=script_args.prompt_suffix,
        system_prompt=script_args.system_prompt, as_chat=script_args.prompt_as_chat,
    )  # fmt: skip


def evaluate_before_after(script_args, training_args, model_path, rows, name) -> dict:
    """Sample `model_path` on the held-out rows (k = --eval_samples, temperature 1, --eval_seed) and report how
    long it took."""
    from .demo import evaluate_checkpoint

    task_metrics = None
    if script_args.demo == "digit_chains":
        from .synthetic_tasks import chain_metrics as task_metrics
    print(
        f"[train.py] evaluating {name}: {len(rows)} held-out prompts x {script_args.eval_samples} samples", flush=True
    )
    started = time.time()
    result = evaluate_checkpoint(
        model_path,
        rows,
        name=name,
        num_samples=script_args.eval_samples,
        max_new_tokens=script_args.eval_max_new_tokens or training_args.max_completion_length,
        seed=script_args.eval_seed,
        batch_size=script_args.eval_prompts_per_batch,
        task_metrics=task_metrics,
    )
    result["eval_seconds"] = time.time() - started
    k = script_args.eval_samples
    print(
        f"[train.py] {name}: avg@{k} {result['metrics'][f'avg@{k}'] or 0:.3f} ({result['eval_seconds']:.0f}s)",
        flush=True,
    )
    return result


def report_before_after(script_args, training_args, model_path, before, after, steps, train_seconds):
    """Print the before/after table and write it, its JSON and the plot in the output directory."""
    from .demo import format_before_after_table, write_before_after

    powerflow = trainer_family(script_args.trainer) == "powerflow"
    title = f"PowerFlow alpha={training_args.alpha}" if powerflow else "GRPO"
    title += f" + {', '.join(script_args.reward_funcs)}" if script_args.reward_funcs else ", label-free"
    if script_args.demo:
        title += f", {script_args.demo}"
    info = {
        "title": title,
        "model": model_path,
        "trainer": script_args.trainer,
        "demo": script_args.demo,
        "steps": steps,
        "train_seconds": train_seconds,
    }
    paths = write_before_after(before, after, training_args.output_dir, info)
    print(f"\n{title}: before and after {steps} training steps\n", flush=True)
    print(format_before_after_table(before, after), flush=True)
    print(
        f"\nTimes: evaluation before {before['eval_seconds']:.0f}s, training {train_seconds:.0f}s, evaluation after "
        f"{after['eval_seconds']:.0f}s. Wrote {', '.join(paths.values())}",
        flush=True,
    )


def shutdown():
    """Tear the process group down, so multi-process runs exit cleanly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
