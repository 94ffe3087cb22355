"""PowerFlow, label-free, TRL-style: `grpo.py` with the two classes swapped and the reward removed.

    python scripts/examples/powerflow.py --output_dir outputs/examples/powerflow --alpha 4 --max_steps 20
    python scripts/examples/powerflow.py --output_dir outputs/examples/pf-lora --use_peft --lora_r 8
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml scripts/examples/powerflow.py --output_dir ...

Without --model_name_or_path / --dataset_name it trains the shipped digit-chain base on the digit-chain prompts.
"""

from datasets import Dataset, load_dataset
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
from trl_powerflow.experiments.demo import DIGIT_CHAIN_BASE, digit_chain_splits


def main(script_args, training_args, model_args):
    if script_args.dataset_name is None:
        dataset = Dataset.from_list(digit_chain_splits()[0])
    else:
        dataset = load_dataset(script_args.dataset_name, script_args.dataset_config)[script_args.dataset_train_split]
    trainer = PowerFlowTrainer(
        model=model_args.model_name_or_path or DIGIT_CHAIN_BASE,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, PowerFlowConfig, ModelConfig))
    main(*parser.parse_args_and_config())
