"""Train with PowerFlow or GRPO from one script: same data, generation settings and logging for both.

    python scripts/train.py --config scripts/recipes/tiny_cpu.yaml
    python scripts/train.py --trainer grpo --reward_funcs accuracy --config scripts/recipes/tiny_cpu_grpo.yaml
    accelerate launch --config_file accelerate_configs/zero3.yaml scripts/train.py --config <recipe.yaml>

Every `PowerFlowConfig` / `GRPOConfig` / `trl.ModelConfig` option is a command-line flag or a recipe key. Without
`--model_name_or_path` an embedded tiny model is built offline; without `--dataset_name` an embedded arithmetic prompt
set is used.

The demonstration (`trl_powerflow.experiments.demo`): `--demo digit_chains` trains the pretrained digit-chain base
shipped with the package on label-free digit-chain prompts, and `--eval_before_after` samples the starting and the
trained model on held-out prompts and prints a before/after table (and writes it, its JSON and a plot next to the
model):

    python scripts/train.py --config scripts/recipes/demo_digit_chains.yaml
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

TRAINERS = ("powerflow", "grpo")


@dataclass
class TrainScriptArguments:
    trainer: str = field(
        default="powerflow",
        metadata={
            "help": "Which trainer to run: 'powerflow' (PowerFlowTrainer) or 'grpo' (GRPOTrainer).",
            "choices": list(TRAINERS),
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local `datasets` directory (save_to_disk) or local JSON/JSONL/CSV/Parquet file. "
            "None uses the embedded tiny arithmetic prompts."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to evaluate on (when eval is enabled)."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts (text or messages)."})
    prompt_suffix: str | None = field(
        default=None, metadata={"help": "Text appended to every prompt, e.g. a \\boxed{} answer instruction."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message prepended to every prompt."})
    prompt_as_chat: bool = field(
        default=False, metadata={"help": "Wrap plain-text prompts in a user message so the chat template applies."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training prompts."})
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Reward functions by name (see trl_powerflow.baselines.REWARD_FUNCS) or 'module:function'. For "
            "GRPO they are the reward (required); for PowerFlow their weighted sum is the shaping term psi(y)."
        },
    )
    tiny_model_dir: str = field(
        default="outputs/tiny-model",
        metadata={"help": "Where the embedded tiny model is built when --model_name_or_path is not given."},
    )
    layer_entropy_every: int = field(
        default=0,
        metadata={
            "help": "Log the entropy of every internal layer policy (logit lens, `layer_entropy/{l}`) every this "
            "many steps, on completions of a fixed probe set of prompts (trl_powerflow.bupo.logit_lens). 0 disables."
        },
    )
    layer_entropy_prompts: int = field(
        default=4, metadata={"help": "Probe prompts of --layer_entropy_every (the first evaluation/training ones)."}
    )
    demo: str | None = field(
        default=None,
        metadata={
            "help": "'digit_chains': the digit-chain demo. Without --model_name_or_path it trains the small base "
            "pretrained on noisy digit-chain solutions and shipped with the package (trl_powerflow/assets/"
            "digit_chain_base); without --dataset_name it trains on digit-chain prompts kept out of that pretraining "
            "(--max_train_samples of 256), and --eval_before_after evaluates on held-out ones (--eval_prompts of 64)."
        },
    )
    eval_before_after: bool = field(
        default=False,
        metadata={
            "help": "Sample the starting model and the trained model (loaded back from --output_dir) alike on "
            "held-out prompts and print a table (avg@k accuracy, pass@k, maj@k, mean length, distinct answers); also "
            "writes before_after.md/.json/.png in --output_dir. Prompts: the demo's held-out set, else the "
            "--dataset_test_split of --dataset_name, else embedded arithmetic prompts (seed 1)."
        },
    )
    eval_prompts: int = field(default=64, metadata={"help": "Held-out prompts of --eval_before_after."})
    eval_samples: int = field(default=8, metadata={"help": "Samples per prompt (k) of --eval_before_after."})
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Token limit of --eval_before_after samples (None: max_completion_length)."}
    )
    eval_seed: int = field(default=0, metadata={"help": "Sampling seed of --eval_before_after (same for both)."})
    eval_prompts_per_batch: int = field(
        default=16, metadata={"help": "Prompts per generate call of --eval_before_after."}
    )


HEAD_ONLY_KEYS = ("log_z_learning_rate", "log_z_detach_features")  # options of the learned log Z' head


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """The recipe path of `--config PATH` (or `--config=PATH`), and the other arguments."""
    path, rest = None, []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            path = next(args, None)
            if path is None or path.startswith("--"):
                raise ValueError(
                    "--config needs the path of a YAML recipe, e.g. --config scripts/recipes/tiny_cpu.yaml."
                )
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return path, rest


def read_recipe(path: str) -> dict:
    """The recipe as a dict; a missing, unparsable or non-mapping file fails with what to fix."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Recipe {path!r} does not exist: pass the path of a YAML recipe to --config, e.g. "
            "scripts/recipes/tiny_cpu.yaml."
        )
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Recipe {path!r} is not valid YAML ({error}). Fix its syntax: one `option: value` per line."
        ) from None
    if not isinstance(recipe, dict):
        raise ValueError(
            f"Recipe {path!r} must be a YAML mapping of `option: value` lines, got {type(recipe).__name__} "
            f"{recipe!r:.80}. Fix the file or pass another recipe."
        )
    return recipe


def cli_value(cli: list[str], name: str) -> str | None:
    """The value of `--name VALUE` / `--name=VALUE` on the command line, else None."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(f"--{name}")
    known, _ = pre.parse_known_args(cli)
    return getattr(known, name)


def trainer_choice(cli: list[str], recipe: dict) -> str:
    """The trainer named by --trainer, else by the recipe's `trainer` key, else 'powerflow'."""
    choice = cli_value(cli, "trainer") or recipe.get("trainer") or "powerflow"
    if choice not in TRAINERS:
        raise ValueError(f"`trainer` must be one of {list(TRAINERS)}, got {choice!r}.")
    return choice


def prepare_distributed_environment(argv: list[str]) -> list[str]:
    """Before any config is built, on a machine without a GPU: make `accelerate launch` processes join one gloo group
    (alone, each would train by itself, or DeepSpeed would see a world of one); and for DeepSpeed create the process
    group early, because ZeRO-3 builds the model partitioned inside `from_pretrained`. Returns the argv to parse."""
    import torch

    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if multi_process and not deepspeed and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    if multi_process and deepspeed:
        import deepspeed as ds

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "gloo" and not any(arg.startswith("--ddp_backend") for arg in argv):
            argv = [*argv, "--ddp_backend", "gloo"]
        ds.init_distributed(dist_backend=backend)
    return argv


def parse(argv: list[str]):
    """Parse the CLI and recipe. One recipe serves both trainers: with `--trainer grpo` the recipe's PowerFlow-only
    keys (alpha, objective, ...) are ignored with a notice, and so are its head-only keys (log_z_learning_rate, ...)
    when the estimator is 'group'; any other unknown key is an error. Command-line options are never ignored."""
    import dataclasses

    from trl import GRPOConfig, ModelConfig, TrlParser

    from trl_powerflow import PowerFlowConfig
    from trl_powerflow.bupo import BuPOGRPOConfig, BuPOPowerFlowConfig

    config_path, cli = split_config(argv)
    recipe = read_recipe(config_path) if config_path else {}
    choice = trainer_choice(cli, recipe)
    notices = []
    estimator = cli_value(cli, "log_z_estimator") or recipe.get("log_z_estimator")
    typed = {arg[2:].split("=", 1)[0] for arg in cli if arg.startswith("--")}
    head_only = [key for key in HEAD_ONLY_KEYS if key in recipe and key not in typed]
    if choice == "powerflow" and estimator == "group" and head_only:
        recipe = {key: value for key, value in recipe.items() if key not in head_only}
        notices.append(f"log_z_estimator=group has no head: ignoring the recipe's head-only keys {head_only}")
    env = recipe.pop("env", {})
    if not isinstance(env, dict):
        raise ValueError(f"The recipe's `env` must be a mapping of environment variables, got {env!r}.")
    os.environ.update({key: str(value) for key, value in env.items()})

    # The BuPO configs are PowerFlowConfig / GRPOConfig plus `bupo_layer` (default None: off) and `bupo_steps`.
    config_cls = BuPOPowerFlowConfig if choice == "powerflow" else BuPOGRPOConfig
    parser = TrlParser((TrainScriptArguments, config_cls, ModelConfig))
    from_config = parser.set_defaults_with_config(**recipe)
    *parsed, from_cli = parser.parse_args_into_dataclasses(args=cli, return_remaining_strings=True)
    script_args, training_args, model_args = parsed
    if from_cli:
        raise ValueError(f"Unknown command-line arguments for --trainer {choice}: {from_cli}.")
    keys = [item[2:] for item in from_config if item.startswith("--")]
    powerflow_only = {f.name for f in dataclasses.fields(PowerFlowConfig)} - {
        f.name for f in dataclasses.fields(GRPOConfig)
    }
    ignored = [key for key in keys if choice == "grpo" and key in powerflow_only]
    unknown = [key for key in keys if key not in ignored]
    if unknown:
        raise ValueError(f"Unknown arguments from config file: {unknown}. Remove them or fix their spelling.")
    if ignored:
        notices.append(f"--trainer grpo ignores the recipe's PowerFlow-only keys: {ignored}")
    if training_args.distributed_state.is_main_process:
        for notice in notices:
            print(f"[train.py] {notice}", flush=True)
    script_args.trainer = choice
    return script_args, training_args, model_args


def check_inputs(script_args, training_args) -> str | None:
    """Cheap checks of the options before any data or model is loaded; returns the checkpoint to resume from."""
    from trl_powerflow.baselines import REWARD_FUNCS

    if script_args.max_train_samples is not None and script_args.max_train_samples < 1:
        raise ValueError(
            f"--max_train_samples must be >= 1, got {script_args.max_train_samples}. Leave it unset to train on "
            "every prompt."
        )
    check_demo_inputs(script_args)
    if script_args.trainer == "grpo" and not script_args.reward_funcs:
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
    from trl_powerflow.experiments.demo import DEMOS, DIGIT_CHAIN_MAX_EVAL, DIGIT_CHAIN_MAX_TRAIN

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
        from trl_powerflow.experiments.demo import digit_chain_base_path

        return digit_chain_base_path()
    if model_args.model_name_or_path is None:
        from trl_powerflow.toys.tiny_models import save_tiny_model

        with training_args.main_process_first(desc="build the embedded tiny model"):
            return save_tiny_model(script_args.tiny_model_dir)
    name = model_args.model_name_or_path
    is_local = name.startswith((".", "/", "~")) or os.path.exists(name)
    if is_local and not os.path.isdir(os.path.expanduser(name)):
        raise FileNotFoundError(f"Model path {name!r} does not exist (pass a model directory or a hub id).")
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
    from trl_powerflow.data import load_prompt_dataset
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    eval_dataset = None
    if script_args.dataset_name is None and script_args.demo == "digit_chains":
        from datasets import Dataset

        from trl_powerflow.experiments.demo import DIGIT_CHAIN_MAX_TRAIN, digit_chain_splits

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


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    argv = prepare_distributed_environment(argv)
    script_args, training_args, model_args = parse(argv)
    checkpoint = check_inputs(script_args, training_args)

    from transformers import AutoTokenizer
    from trl import GRPOTrainer, get_peft_config, get_quantization_config

    from trl_powerflow import PowerFlowTrainer
    from trl_powerflow.bupo import BuPOGRPOTrainer, BuPOPowerFlowTrainer

    state = training_args.distributed_state
    if state.is_main_process:
        print(
            f"[train.py] trainer={script_args.trainer} processes={state.num_processes} "
            f"distributed_type={state.distributed_type.value} device={state.device}",
            flush=True,
        )
    model_path = resolve_model(script_args, training_args, model_args)
    train_dataset, eval_dataset = load_datasets(script_args, training_args)
    before = None
    if script_args.eval_before_after:
        held_out_rows = before_after_rows(script_args)
        if state.is_main_process:
            before = evaluate_before_after(script_args, training_args, model_path, held_out_rows, "before (base)")

    quantization_config = get_quantization_config(model_args)
    training_args.model_init_kwargs = {
        **(training_args.model_init_kwargs or {}),
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    tokenizer = AutoTokenizer.from_pretrained(
        model_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        padding_side="left",
        truncation_side="left",
    )
    reward_funcs = []
    if script_args.reward_funcs:
        from trl_powerflow.baselines import get_reward_funcs

        reward_funcs = get_reward_funcs(script_args.reward_funcs, tokenizer=tokenizer)
    if training_args.bupo_layer is not None:
        trainer_cls = BuPOPowerFlowTrainer if script_args.trainer == "powerflow" else BuPOGRPOTrainer
    else:
        trainer_cls = PowerFlowTrainer if script_args.trainer == "powerflow" else GRPOTrainer
    trainer = trainer_cls(
        model=model_path,
        reward_funcs=reward_funcs or None,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=quantization_config,
    )
    for reward in reward_funcs:  # model-based rewards (self-certainty, entropy) score with the live policy
        if hasattr(reward, "model") and reward.model is None:
            reward.model = trainer.model
    if script_args.layer_entropy_every:
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

    started = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.time() - started
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        print(f"Saved the trained model to {training_args.output_dir}")
        if before is not None:
            steps = trainer.state.global_step
            output_dir = training_args.output_dir
            name = f"after ({steps} step{'' if steps == 1 else 's'})"
            after = evaluate_before_after(script_args, training_args, output_dir, held_out_rows, name)
            report_before_after(script_args, training_args, model_path, before, after, steps, train_seconds)
    shutdown()
    return trainer


def before_after_rows(script_args) -> list[dict]:
    """The held-out prompts of --eval_before_after: the demo's held-out set, else the test split of the dataset,
    else embedded arithmetic prompts (seed 1, like the embedded evaluation set)."""
    n = script_args.eval_prompts
    if script_args.demo == "digit_chains":
        from trl_powerflow.experiments.demo import digit_chain_splits

        return digit_chain_splits(num_eval=n)[1]
    if script_args.dataset_name is None:
        from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

        return [dict(row) for row in tiny_prompt_dataset(n=n, seed=1)]
    from trl_powerflow.data import load_prompt_dataset

    dataset = load_prompt_dataset(
        script_args.dataset_name,
        config=script_args.dataset_config,
        split=script_args.dataset_test_split,
        prompt_column=script_args.prompt_column,
        prompt_suffix=script_args.prompt_suffix,
        system_prompt=script_args.system_prompt,
        max_samples=n,
        as_chat=script_args.prompt_as_chat,
    )
    return [dict(row) for row in dataset]


def evaluate_before_after(script_args, training_args, model_path, rows, name) -> dict:
    """Sample `model_path` on the held-out rows (k = --eval_samples, temperature 1, --eval_seed) and report how
    long it took."""
    from trl_powerflow.experiments.demo import evaluate_checkpoint

    task_metrics = None
    if script_args.demo == "digit_chains":
        from trl_powerflow.experiments.synthetic_tasks import chain_metrics as task_metrics
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
    from trl_powerflow.experiments.demo import format_before_after_table, write_before_after

    title = f"PowerFlow alpha={training_args.alpha}" if script_args.trainer == "powerflow" else "GRPO"
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


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is saved and the process group is gone; skip the interpreter teardown, where a still-joinable
        # communication thread can abort ("terminate called without an active exception") a finished run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
