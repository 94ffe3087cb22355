"""The options of `trl-powerflow train` (its script-arguments dataclass) and the reading of its `--config` recipe."""

import argparse
import os
from dataclasses import dataclass, field

from trl_powerflow.experiments.train_run import TRAINERS


@dataclass
class TrainScriptArguments:
    """The options of `trl-powerflow train` besides the trainer's config and `trl.ModelConfig`."""

    trainer: str = field(
        default="powerflow",
        metadata={
            "help": "Which trainer to run: 'powerflow' (PowerFlowTrainer), 'grpo' (GRPOTrainer), or their BuPO "
            "variants 'bupo_powerflow' / 'bupo_grpo' (BuPOPowerFlowTrainer / BuPOGRPOTrainer: bottom-up policy "
            "optimisation, see trl_powerflow.bupo; `--trainer bupo_powerflow --help` lists their options).",
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
