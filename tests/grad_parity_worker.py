"""Worker of tests/test_grad_parity.py: one PowerFlow optimizer step on a fixed global batch of 16 completions
(greedy decoding, equal-length prompts, no dropout), run as one process or under `accelerate launch` as two.

Usage: python grad_parity_worker.py MODEL_DIR PROMPTS_JSONL OUTPUT_DIR

Rank 0 writes OUTPUT_DIR/grads.safetensors: the gradient of every trainable tensor (policy and head) as the optimizer
receives it (after DDP's all-reduce, before the step), the head's `offset` buffer after its first-batch
initialisation (before the step) and after the step's re-centring, and the step's logged loss.
"""

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(model_dir, prompts, output_dir):
    import torch
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from trl_powerflow import PowerFlowConfig, PowerFlowTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    with open(prompts) as f:
        dataset = Dataset.from_list([json.loads(line) for line in f])
    args = PowerFlowConfig(
        output_dir=os.path.join(output_dir, "run"), per_device_train_batch_size=16 // world, num_generations=4,
        max_completion_length=12, generation_kwargs={"do_sample": False}, disable_dropout=True, max_steps=1,
        learning_rate=1e-2, max_grad_norm=1e9, logging_steps=1, report_to=[], save_strategy="no", seed=0,
        use_cpu=True,
    )  # fmt: skip
    trainer = PowerFlowTrainer(model=model_dir, args=args, train_dataset=dataset)
    saved = {}

    class Record(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            for name, param in trainer.model.named_parameters():
                if param.grad is not None:
                    saved[f"grad/{name}"] = param.grad.detach().float().clone()
            saved["offset/before_step"] = trainer.log_z_head.offset.detach().float().clone().reshape(-1)

    trainer.add_callback(Record())
    trainer.train()
    assert trainer.accelerator.num_processes == world
    saved["offset/after_step"] = trainer.log_z_head.offset.detach().float().clone().reshape(-1)
    saved["loss"] = torch.tensor([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    if trainer.accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in saved.items()}, os.path.join(output_dir, "grads.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
