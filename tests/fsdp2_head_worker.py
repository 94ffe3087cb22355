"""Worker of tests/test_fsdp2_head.py, run by torchrun with 2 CPU processes (gloo): the tiny policy with the
log-partition head attached as PowerFlowTrainer attaches it, sharded with torch FSDP2 (`fully_shard` per decoder layer
and at the root), the head called inside the root's forward as the trainer calls it. Two AdamW steps, then the head
is saved whole (`full_head_state`), loaded back into a freshly sharded copy (`load_full_head_state`), and both are
compared on the same prompt features."""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from trl_powerflow.training.log_z_head import LogZHead, full_head_state, load_full_head_state, masked_mean


def sharded_policy(model_dir, mesh, seed):
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(seed)
    policy.log_z_head = LogZHead(policy.config.hidden_size, init=0.5)
    log_z = []

    def head_in_forward(module, args, kwargs, output):  # as PowerFlowTrainer._log_z_forward_hook
        mask = kwargs["attention_mask"]
        log_z.append(module.log_z_head(masked_mean(output.hidden_states[-1], mask)))

    policy.register_forward_hook(head_in_forward, with_kwargs=True)
    for layer in policy.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(policy, mesh=mesh)
    return policy, log_z


def main(model_dir, out):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    policy, log_z = sharded_policy(model_dir, mesh, seed=0)
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, policy.config.vocab_size, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    before = full_head_state(policy.log_z_head)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    for _ in range(2):
        log_z.clear()
        output = policy(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        loss = (log_z[0] - 3.0).pow(2).mean() + output.logits.float().pow(2).mean() * 1e-3
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    state = full_head_state(policy.log_z_head)  # collective
    if rank == 0:
        save_file(state, f"{out}/log_z_head.safetensors")
        save_file(before, f"{out}/log_z_head_before.safetensors")
    dist.barrier()

    # A fresh sharded copy (another head initialisation) with the trained language model, then the saved head.
    fresh, fresh_log_z = sharded_policy(model_dir, mesh, seed=1)
    options = StateDictOptions(full_state_dict=True)
    trained = {k: v for k, v in get_model_state_dict(policy, options=options).items() if "log_z_head" not in k}
    if rank == 0:
        save_file({k: v.detach().cpu().contiguous() for k, v in trained.items()}, f"{out}/model.safetensors")
    set_model_state_dict(fresh, trained, options=StateDictOptions(full_state_dict=True, strict=False))
    load_full_head_state(fresh.log_z_head, load_file(f"{out}/log_z_head.safetensors"))
    with torch.no_grad():
        log_z.clear()
        policy(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        fresh(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(fresh_log_z[-1], log_z[-1], rtol=0, atol=0)  # the reloaded head is the trained one
    save_file({"log_z": log_z[-1].contiguous(), "ids": ids}, f"{out}/rank{rank}.safetensors")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
