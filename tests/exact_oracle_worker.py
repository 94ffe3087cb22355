"""Worker of tests/test_exact_fixed_point.py: train PowerFlowTrainer on the enumerable toy in several processes and
save the final model and log-partition head, which the test then compares with its exact fixed point.

    torchrun --standalone --nproc_per_node 2 tests/exact_oracle_worker.py MODEL_DIR OUTPUT_DIR SPEC_JSON

SPEC_JSON: {"prompts": [...], "shaping": false, "config": {PowerFlowConfig keyword arguments except output_dir}}.
Writes OUTPUT_DIR/worker_result.json (rank 0): the number of processes, the log history and, for each prompt, the
log Z' of the in-memory head (to check that the saved head reproduces it).
"""

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main():
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset

    from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
    from trl_powerflow.toys.enumerable import TOY_TOKENS, toy_shaping_reward

    model_dir, output_dir, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    prompts = spec["prompts"]
    trainer = PowerFlowTrainer(
        model=model_dir,
        args=PowerFlowConfig(output_dir=output_dir, **spec["config"]),
        reward_funcs=[toy_shaping_reward] if spec.get("shaping") else None,
        train_dataset=Dataset.from_dict({"prompt": list(prompts) * 64}),
    )
    trainer.train()
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        policy = trainer.accelerator.unwrap_model(trainer.model)
        log_z = {}
        with torch.no_grad():
            for prompt in prompts:
                ids = torch.tensor([[TOY_TOKENS.index(t) for t in prompt.split()]], device=policy.device)
                hidden = policy.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
                log_z[prompt] = trainer.log_z_head(hidden.mean(dim=1)).item()
        result = {
            "num_processes": trainer.accelerator.num_processes,
            "log_history": trainer.state.log_history,
            "log_z": log_z,
        }
        with open(os.path.join(output_dir, "worker_result.json"), "w") as f:
            json.dump(result, f)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a 2-process gloo run can abort at exit without it


if __name__ == "__main__":
    main()
