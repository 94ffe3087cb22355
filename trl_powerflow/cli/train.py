"""`trl-powerflow train`: train with PowerFlow or GRPO from one command: same data, generation settings and logging.

    trl-powerflow train --config scripts/recipes/tiny_cpu.yaml
    trl-powerflow train --trainer grpo --reward_funcs accuracy --config scripts/recipes/tiny_cpu_grpo.yaml
    trl-powerflow train --trainer bupo_powerflow --bupo_layer 1 --bupo_steps 5 --config scripts/recipes/tiny_cpu.yaml
    accelerate launch --config_file accelerate_configs/zero3.yaml scripts/train.py --config <recipe.yaml>

(`python scripts/train.py ...` is the same command.) Every `PowerFlowConfig` / `GRPOConfig` / `trl.ModelConfig`
option is a command-line flag or a recipe key. Without `--model_name_or_path` an embedded tiny model is built offline;
without `--dataset_name` an embedded arithmetic prompt set is used. The BuPO options (`bupo_layer`, `bupo_steps`) exist
only with `--trainer bupo_powerflow` / `bupo_grpo` (given without it, they select that trainer, with a notice).

The demonstration (`trl_powerflow.experiments.demo`): `--demo digit_chains` trains the pretrained digit-chain base
shipped with the package on label-free digit-chain prompts, and `--eval_before_after` samples the starting and the
trained model on held-out prompts and prints a before/after table (and writes it, its JSON and a plot next to the
model): `trl-powerflow train --config scripts/recipes/demo_digit_chains.yaml`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from trl_powerflow.cli._train_options import TrainScriptArguments, cli_value, read_recipe, split_config
from trl_powerflow.experiments import train_run
from trl_powerflow.experiments.train_run import TRAINERS, trainer_family

__all__ = ["TRAINERS", "TrainScriptArguments", "finish", "main", "make_parser", "parse", "run", "trainer_choice"]

HEAD_ONLY_KEYS = ("log_z_learning_rate", "log_z_detach_features")  # options of the learned log Z' head
BUPO_KEYS = ("bupo_layer", "bupo_steps")  # options of the BuPO configs only


def config_class(trainer: str):
    """The training-arguments dataclass of `--trainer`."""
    if trainer == "powerflow":
        from trl_powerflow import PowerFlowConfig

        return PowerFlowConfig
    if trainer == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    from trl_powerflow.bupo import BuPOGRPOConfig, BuPOPowerFlowConfig

    return BuPOPowerFlowConfig if trainer == "bupo_powerflow" else BuPOGRPOConfig


def make_parser(trainer: str = "powerflow", prog: str | None = None):
    """The `TrlParser` of `--trainer trainer`: script arguments, the trainer's config and `trl.ModelConfig`."""
    from trl import ModelConfig, TrlParser

    parser = TrlParser(
        (TrainScriptArguments, config_class(trainer), ModelConfig),
        prog=prog,
        usage="%(prog)s [--config RECIPE.yaml] [--trainer TRAINER] [--OPTION VALUE ...]",
        description=f"Train with PowerFlow or GRPO: same data, generation, logging. Options of --trainer {trainer}:",
        epilog="Other trainers' options: --trainer grpo --help, --trainer bupo_powerflow --help (BuPO), ...",
    )
    parser.add_argument(  # documented here; read by `parse` (split_config) before this parser runs
        "--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS, help="YAML recipe of `option: value` lines "
        "(e.g. scripts/recipes/tiny_cpu.yaml); command-line options override it."
    )  # fmt: skip
    group_options(parser, trainer)
    return parser


def group_options(parser, trainer: str) -> None:
    """`--help` in groups, the trainer's own options first: PowerFlow (or BuPO), script and data, model and PEFT, then
    GRPO's and the Trainer's."""
    import dataclasses

    from trl import GRPOConfig, ModelConfig

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    own = names(config_class(trainer)) - names(GRPOConfig)
    title = "PowerFlow options" if trainer_family(trainer) == "powerflow" else "BuPO options"
    groups = [
        (title, own),
        ("script and data options", names(TrainScriptArguments) | {"config"}),
        ("model and PEFT options (trl.ModelConfig)", names(ModelConfig)),
        ("GRPO and Trainer options (trl.GRPOConfig)", None),
    ]
    made = [(parser.add_argument_group(name), members) for name, members in groups if members is None or members]
    for action in list(parser._actions):
        if action.dest == "help":
            continue
        if action.dest == "resume_from_checkpoint":
            action.help = (action.help or "") + " `last` (or true) resumes from the latest checkpoint in --output_dir."
        for group in parser._action_groups:
            if action in group._group_actions and not any(group is g for g, _ in made):
                group._group_actions.remove(action)
        target = next(g for g, members in made if members is None or action.dest in members)
        target._group_actions.append(action)
    parser._action_groups = [g for g in parser._action_groups if g._group_actions or g.title == "positional arguments"]


def did_you_mean(unknown: list[str], known: list[str]) -> str:
    """' Did you mean --learning_rate?' for each unknown option (with or without its dashes) close to a known one."""
    import difflib

    hints = []
    for name in unknown:
        bare = name.lstrip("-").split("=", 1)[0].replace("-", "_")
        close = difflib.get_close_matches(bare, known, n=1, cutoff=0.75)
        if close:
            hints.append(f"--{close[0]}" if name.startswith("--") else close[0])
    return f" Did you mean {', '.join(hints)}?" if hints else ""


def trainer_choice(cli: list[str], recipe: dict) -> tuple[str, list[str]]:
    """The trainer named by --trainer, else by the recipe's `trainer` key, else 'powerflow'; BuPO options given to a
    plain trainer select its BuPO variant. Returns (trainer, notices)."""
    choice = cli_value(cli, "trainer") or recipe.get("trainer") or "powerflow"
    if choice not in TRAINERS:
        raise ValueError(f"`trainer` must be one of {list(TRAINERS)}, got {choice!r}.")
    typed = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in cli if arg.startswith("--")}  # --bupo-layer too
    asked = [key for key in BUPO_KEYS if key in typed or key in recipe]
    if asked and not choice.startswith("bupo_"):
        choice = f"bupo_{choice}"
        return choice, [f"{asked} are BuPO options: training with --trainer {choice}"]
    return choice, []


def parse(argv: list[str], prog: str | None = None):
    """Parse the CLI and recipe. One recipe serves both trainers: with `--trainer grpo` the recipe's PowerFlow-only
    keys (alpha, objective, ...) are ignored with a notice, and so are its head-only keys (log_z_learning_rate, ...)
    when the estimator is 'group'; any other unknown key is an error. Command-line options are never ignored."""
    import dataclasses

    from trl import GRPOConfig

    from trl_powerflow import PowerFlowConfig

    config_path, cli = split_config(argv)
    recipe = read_recipe(config_path) if config_path else {}
    choice, notices = trainer_choice(cli, recipe)
    family = trainer_family(choice)
    estimator = cli_value(cli, "log_z_estimator") or recipe.get("log_z_estimator")
    typed = {arg[2:].split("=", 1)[0] for arg in cli if arg.startswith("--")}
    head_only = [key for key in HEAD_ONLY_KEYS if key in recipe and key not in typed]
    value_head = (cli_value(cli, "objective") or recipe.get("objective")) == "token_balance"  # keeps its head
    if family == "powerflow" and estimator == "group" and head_only and not value_head:
        recipe = {key: value for key, value in recipe.items() if key not in head_only}
        notices.append(f"log_z_estimator=group has no head: ignoring the recipe's head-only keys {head_only}")
    env = recipe.pop("env", {})
    if not isinstance(env, dict):
        raise ValueError(f"The recipe's `env` must be a mapping of environment variables, got {env!r}.")
    os.environ.update({key: str(value) for key, value in env.items()})

    parser = make_parser(choice, prog=prog)
    from_config = parser.set_defaults_with_config(**recipe)
    *parsed, from_cli = parser.parse_args_into_dataclasses(args=cli, return_remaining_strings=True)
    script_args, training_args, model_args = parsed
    known = [action.dest for action in parser._actions]
    if from_cli:
        flags = [arg for arg in from_cli if arg.startswith("--")]
        raise ValueError(
            f"Unknown command-line arguments for --trainer {choice}: {from_cli}.{did_you_mean(flags, known)}"
        )
    keys = [item[2:] for item in from_config if item.startswith("--")]
    powerflow_only = {f.name for f in dataclasses.fields(PowerFlowConfig)} - {
        f.name for f in dataclasses.fields(GRPOConfig)
    }
    ignored = [key for key in keys if family == "grpo" and key in powerflow_only]
    unknown = [key for key in keys if key not in ignored]
    if unknown:
        raise ValueError(
            f"Unknown arguments from config file: {unknown}. Remove them or fix their spelling."
            f"{did_you_mean(unknown, known)}"
        )
    if ignored:
        notices.append(f"--trainer {choice} ignores the recipe's PowerFlow-only keys: {ignored}")
    if training_args.distributed_state.is_main_process:
        for notice in notices:
            print(f"[train.py] {notice}", flush=True)
    script_args.trainer = choice
    return script_args, training_args, model_args


def main(argv: list[str] | None = None, prog: str | None = None):
    """Parse, check, train, save (and evaluate before/after); returns the trainer."""
    argv = sys.argv[1:] if argv is None else argv
    argv = train_run.prepare_distributed_environment(argv)
    script_args, training_args, model_args = parse(argv, prog=prog)
    checkpoint = train_run.check_inputs(script_args, training_args)

    from transformers import AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    state = training_args.distributed_state
    if state.is_main_process:
        print(
            f"[train.py] trainer={script_args.trainer} processes={state.num_processes} "
            f"distributed_type={state.distributed_type.value} device={state.device}",
            flush=True,
        )
    model_path = train_run.resolve_model(script_args, training_args, model_args)
    train_dataset, eval_dataset = train_run.load_datasets(script_args, training_args)
    before = None
    if script_args.eval_before_after:
        held_out_rows = train_run.before_after_rows(script_args)
        if state.is_main_process:
            before = train_run.evaluate_before_after(
                script_args, training_args, model_path, held_out_rows, "before (base)"
            )

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
    trainer = train_run.trainer_class(script_args.trainer)(
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
        train_run.install_layer_entropy(trainer, script_args, training_args, tokenizer, train_dataset, eval_dataset)

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
            after = train_run.evaluate_before_after(script_args, training_args, output_dir, held_out_rows, name)
            train_run.report_before_after(script_args, training_args, model_path, before, after, steps, train_seconds)
    train_run.shutdown()
    return trainer


def finish():
    """After `main` in a command-line run: in a multi-process run everything is saved and the process group is gone;
    skip the interpreter teardown, where a still-joinable communication thread can abort ("terminate called without
    an active exception") a finished run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run(argv: list[str] | None = None, prog: str | None = None):
    """`main` then `finish`: what `scripts/train.py` and `python -m trl_powerflow.cli.train` run."""
    main(argv, prog=prog)
    finish()


if __name__ == "__main__":
    run()
