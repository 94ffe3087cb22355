"""Worker of tests/test_launch_matrix.py: PowerFlow runs with the learned log Z' head in every process of a
multi-process launch (torchrun for DDP, `accelerate launch` with a DeepSpeed config for ZeRO), one per --case, in
order, each with a trainer and a model of its own.

For each case every rank writes, under --out/<case>/ (a failing case writes rank{r}.error, its traceback, instead
of the results, and the next case runs):
  rank{r}_initial.safetensors  trainable parameters and the head's state before training
  rank{r}.safetensors          the same tensors after training (ZeRO-3: gathered from their partitions)
  rank{r}.json                 world size, distributed type, DDP's find_unused_parameters, the log history
Keys are "param/<name>" for the trainable parameters of the language model (all of them, or the LoRA ones) and
"head/<key>" for the head's state dict (its parameters and its `offset` / `initialised` buffers).
"""

import argparse
import gc
import json
import os
import sys
import traceback

# name: (LoRA instead of full fine-tuning, gradient checkpointing, BuPO for the first step, objective[, estimator])
CASES = {
    "full_gc": (False, True, False, "la_tb"),
    "full_nogc": (False, False, False, "la_tb"),
    "lora_gc": (True, True, False, "la_tb"),
    "lora_nogc": (True, False, False, "la_tb"),
    "bupo_full_nogc": (False, False, True, "la_tb"),
    "bupo_full_gc": (False, True, True, "la_tb"),
    "lora": (True, True, False, "la_tb"),  # for the ZeRO launches
    # objective='token_balance': the per-prefix value head instead of log Z'(q), the same switches
    "tb_full_gc": (False, True, False, "token_balance"),
    "tb_full_nogc": (False, False, False, "token_balance"),
    "tb_lora_gc": (True, True, False, "token_balance"),
    "tb_lora_nogc": (True, False, False, "token_balance"),
    "tb_lora": (True, True, False, "token_balance"),  # for the ZeRO launches
    # token_balance with V(root) from the group (all-gathered statistics) and the value head for the other prefixes
    "tbg_full_gc": (False, True, False, "token_balance", "group"),
    "tbg_lora_nogc": (True, False, False, "token_balance", "group"),
    "tbg_lora": (True, True, False, "token_balance", "group"),  # for the ZeRO launches
}


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--case", action="append", choices=list(CASES), required=True, help="run these, in order")
    parser.add_argument("--max_steps", type=int, default=2)
    return parser.parse_args(argv)


def snapshot(model, head):
    """CPU copies of the trainable parameters and the head's state, gathered when ZeRO-3 partitions them."""
    import torch

    from trl_powerflow.training.log_z_head import is_log_z_param

    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad and not is_log_z_param(name)]
    partitioned = [p for _, p in params if hasattr(p, "ds_id")] + [p for p in head.parameters() if hasattr(p, "ds_id")]
    if partitioned:  # collective: every rank enters it
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(partitioned)
    else:
        import contextlib

        gather = contextlib.nullcontext()
    with gather, torch.no_grad():
        state = {f"param/{name}": p.detach().cpu().clone() for name, p in params}
        state.update({f"head/{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()})
    return {k: v.contiguous() for k, v in state.items()}


def run_case(name, model_path, out, max_steps, deepspeed_run):
    """Build the trainer for one case, snapshot, train, snapshot; every rank writes its own files under `out`."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
    from trl_powerflow.bupo import BuPOPowerFlowConfig, BuPOPowerFlowTrainer
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    lora, checkpointing, bupo, objective, *estimator = CASES[name]
    config_cls, trainer_cls = (BuPOPowerFlowConfig, BuPOPowerFlowTrainer) if bupo else (
        PowerFlowConfig, PowerFlowTrainer
    )  # fmt: skip
    config = config_cls(
        output_dir=out,
        use_cpu=not deepspeed_run,  # DeepSpeed picks its CPU accelerator itself; use_cpu would bypass it
        bf16=False,
        ddp_backend="gloo",
        ddp_timeout=300,  # a rank stuck in a collective fails the run instead of waiting 30 minutes
        num_generations=4,
        per_device_train_batch_size=4,
        max_completion_length=8,
        max_steps=max_steps,
        learning_rate=1e-3,
        logging_steps=1,
        disable_dropout=True,
        gradient_checkpointing=checkpointing,
        seed=0,
        save_strategy="no",
        report_to=[],
        log_z_estimator=(estimator or ["head"])[0],
        objective=objective,
        **({"bupo_layer": 1, "bupo_steps": 1} if bupo else {}),
    )
    peft_config = None
    if lora:
        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    trainer = trainer_cls(
        model=model_path,
        args=config,
        train_dataset=tiny_prompt_dataset(n=16),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    rank = trainer.accelerator.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)
    save_file(snapshot(model, trainer.log_z_head), os.path.join(out, f"rank{rank}_initial.safetensors"))

    trainer.train()

    model = trainer.accelerator.unwrap_model(trainer.model)
    save_file(snapshot(model, trainer.log_z_head), os.path.join(out, f"rank{rank}.safetensors"))
    info = {
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type.value),
        "find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
        "gradient_checkpointing": config.gradient_checkpointing,
        "objective": trainer.objective,
        "estimator": type(trainer.log_z).__name__,
        "log_history": trainer.state.log_history,
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(1)
    deepspeed_run = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed_run:
        # ZeRO-3 partitions the model inside from_pretrained: the process group must exist before the config.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    rank = int(os.environ.get("RANK", "0"))
    for name in args.case:
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        try:
            run_case(name, args.model, out, args.max_steps, deepspeed_run)
        except Exception:  # record it and go on with the next case (a symmetric error fails every rank alike)
            with open(os.path.join(out, f"rank{rank}.error"), "w") as f:
                f.write(traceback.format_exc())
            traceback.print_exc()
        gc.collect()

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Everything is written and the process group is gone; skip the interpreter teardown, where a still-joinable
    # communication thread can abort a finished multi-process run (as `trl-powerflow train` does).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
