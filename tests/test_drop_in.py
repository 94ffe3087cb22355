"""Where PowerFlowTrainer must equal GRPOTrainer, checked against GRPOTrainer's own computation or by autograd:
the beta KL term (value and gradient), the weight of each completion under any split of the batch, warnings for
options that leave the target undetermined, the frozen base of an in-memory policy, the model card."""

import warnings

import pytest
import torch
from helpers import logged, powerflow_args
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from trl_powerflow import PowerFlowTrainer
from trl_powerflow.toys.tiny_models import tiny_prompt_dataset


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def generation_batch(trainer, n):
    """A generation batch of `n` completions (n / num_generations prompts), as the training loop builds it."""
    trainer.model.train()
    data = tiny_prompt_dataset(n=n)
    return trainer._generate_and_score_completions([data[i // trainer.num_generations] for i in range(n)])


@torch.no_grad()
def perturb(model):
    """Move the policy away from the base the same way in every trainer, so that the KL to the base is not 0."""
    params = sorted((name, param) for name, param in model.named_parameters() if "log_z" not in name)
    for i, (_, param) in enumerate(params):
        param.add_(0.05 * torch.sin(torch.arange(param.numel(), dtype=param.dtype) + i).view_as(param))


def rows(batch, index):
    """The rows `index` of a generation batch (scalars such as the batch counts are kept as they are)."""
    return {k: v[index] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


def policy_grads(trainer, loss):
    trainer.model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None and "log_z" not in n}


# ------------------------------------------------------------------------------------------------- beta KL term
KL_CASES = [(False, True, 1.0), (False, False, 1.0), (True, True, 1.0), (True, False, 1.0)]
KL_CASES += [(False, True, 0.7), (True, True, 0.7), (True, False, 0.7)]


@pytest.mark.parametrize(("off_policy", "bias_correction", "temperature"), KL_CASES)
def test_kl_term_value_and_gradient_equal_grpo(tiny_model_dir, tmp_path, off_policy, bias_correction, temperature):
    """GRPOTrainer with zero advantages has a loss made only of its KL term (the clipped surrogate is 0 with zero
    gradient). PowerFlow's KL term is its loss with beta minus its loss with beta = 0 on the same batch. Both must be
    equal in value and gradient for every policy parameter, on-policy and with reused generations (old log-probs from
    another policy), with and without `use_bias_correction_kl`, with accumulation (GA = steps_per_generation = 2) and a
    row left without tokens, at T = 1 and at T = 0.7 (GRPO's k3 and ratio use log softmax(z / T); the base at T is
    the one PowerFlow computed at generation, handed to GRPO as its `ref_per_token_logps`).

    Seen to fail when the KL used temperature-1 log-probs at T = 0.7 (the previous code: value 0.060 vs 0.129)."""
    common = dict(
        temperature=temperature,
        beta=0.1,
        use_bias_correction_kl=bias_correction,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    pf = PowerFlowTrainer(
        model=tiny_model_dir,
        args=powerflow_args(tmp_path / "pf", log_z_init=0.0, **common),
        train_dataset=tiny_prompt_dataset(n=8),
    )
    grpo_args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"), max_completion_length=8, num_generations=4, bf16=False, use_cpu=True,
        report_to=[], save_strategy="no", seed=0, **common,
    )  # fmt: skip
    grpo = GRPOTrainer(
        model=tiny_model_dir, reward_funcs=zero_reward, args=grpo_args, train_dataset=tiny_prompt_dataset(n=8)
    )
    assert grpo.loss_type == "dapo"  # GRPO's default normalisation, the one PowerFlow's KL term follows

    batch = generation_batch(pf, 8)
    perturb(pf.model)
    perturb(grpo.model)
    batch["completion_mask"][1] = 0  # a row with no tokens (as a masked truncation leaves it)
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    batch["num_sequences_in_batch"] = (batch["completion_mask"].sum(-1) > 0).sum()
    at_t = temperature != 1.0
    base_key = "base_per_token_logps_at_t" if at_t else "base_per_token_logps"
    if at_t:  # the base at T, not at 1
        assert (batch[base_key] - batch["base_per_token_logps"]).abs().max() > 0.01
    if off_policy:
        with torch.no_grad():
            batch["old_per_token_logps"] = (batch["base_per_token_logps"] * 0.9).detach()
            if at_t:
                batch["old_per_token_logps_at_t"] = (batch[base_key] * 0.9).detach()
    micro = rows(batch, slice(0, 4))
    grpo_inputs = {**micro, "ref_per_token_logps": micro[base_key]}
    if at_t:
        grpo_inputs["old_per_token_logps"] = micro.get("old_per_token_logps_at_t")
    grpo_inputs["advantages"] = torch.zeros(4)

    for trainer in (pf, grpo):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 2
    grpo_loss = grpo._compute_loss(grpo.model, grpo_inputs)
    grpo_grads = policy_grads(grpo, grpo_loss)

    with_kl = pf._compute_loss(pf.model, micro)
    grads_with = policy_grads(pf, with_kl)
    pf.beta = 0.0
    without_kl = pf._compute_loss(pf.model, micro)
    grads_without = policy_grads(pf, without_kl)

    # The KL term is a difference of two float32 losses: allow the rounding of the larger term (8 ulp of its value;
    # 64 ulp of the largest gradient entry, which sums many products through two layers' backward).
    eps = torch.finfo(torch.float32).eps
    assert grpo_loss.item() > 0
    assert (with_kl - without_kl).item() == pytest.approx(grpo_loss.item(), abs=8 * eps * without_kl.abs().item())
    assert set(grads_with) == set(grpo_grads)
    for name, grad in grpo_grads.items():
        atol = 64 * eps * grads_without[name].abs().max().item()
        difference = grads_with[name] - grads_without[name]
        torch.testing.assert_close(difference, grad, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
    # the KL gradient is far above that rounding
    assert max(g.abs().max() for g in grpo_grads.values()) > 100 * 64 * eps * max(
        g.abs().max() for g in grads_without.values()
    )
    assert logged_kl(pf) == pytest.approx(logged_kl(grpo), rel=1e-5)


def logged_kl(trainer):
    return trainer._metrics["train"]["kl"][0]


# -------------------------------------------------------------------------------------- weight per completion
SPLITS = {
    # (per_device_train_batch_size, gradient_accumulation_steps, steps_per_generation): 8 completions in all
    "one micro-batch": (8, 1, 1),
    "4 accumulated micro-batches": (2, 4, 4),
    "2 optimizer steps of 2 micro-batches": (2, 2, 4),
    "2 optimizer steps of 1 micro-batch": (4, 1, 2),
}


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_every_completion_weighs_the_same_whatever_the_split(tiny_model_dir, tmp_path, split):
    """d(objective)/d(log Z'_i) = 2 c_i w_i r_i, so autograd through a log Z' leaf gives the weight c_i with which
    completion i enters the objective, summed over every micro-batch (and every optimizer step) of one generation
    batch. On-policy w = 1. Every completion with tokens must weigh the same, c_i = k/N (N = 6 of 8 here: two rows
    lose their tokens; k = steps_per_generation / gradient_accumulation_steps optimizer steps share the batch, each
    step's loss being the mean over its share, as GRPO's token-level 'dapo' normalisation does), rows without tokens
    0. Processes: each divides by N / num_processes and DDP averages them, which the 1- vs 2-process equivalence test
    in test_launch.py checks end to end."""
    batch_size, accumulation, steps_per_generation = SPLITS[split]
    args = powerflow_args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=steps_per_generation,
        num_generations=4,
        log_z_estimator="group",
        gradient_checkpointing=False,
    )
    trainer = PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset(n=8))
    batch = generation_batch(trainer, 8)
    assert batch["completion_ids"].size(0) == 8
    batch["completion_mask"][[2, 5]] = 0
    batch["num_sequences_in_batch"] = (batch["completion_mask"].sum(-1) > 0).sum()
    log_z = torch.full((8,), 0.3, requires_grad=True)
    batch["group_log_z"] = log_z
    batch.pop("group_id", None)

    trainer.current_gradient_accumulation_steps = accumulation
    permutation = torch.randperm(8, generator=torch.Generator().manual_seed(0))  # the trainer shuffles too
    total = 0.0
    residuals = torch.zeros(8)
    for start in range(0, 8, batch_size):
        index = permutation[start : start + batch_size]
        micro = rows(batch, index)
        micro["group_log_z"] = log_z[index]
        total = total + trainer._compute_loss(trainer.model, micro)
        residuals[index] = micro_residuals(trainer, micro)
    total.backward()
    valid = batch["completion_mask"].sum(-1) > 0
    weight = log_z.grad / (2 * residuals)
    expected = steps_per_generation / accumulation / 6
    torch.testing.assert_close(weight[valid], torch.full((6,), expected), rtol=1e-4, atol=0)
    assert torch.all(log_z.grad[~valid] == 0)


@torch.no_grad()
def micro_residuals(trainer, micro):
    from trl_powerflow.losses import tb_residual

    ids = torch.cat([micro["prompt_ids"], micro["completion_ids"]], 1)
    mask = torch.cat([micro["prompt_mask"], micro["completion_mask"]], 1)
    logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, micro["completion_ids"].size(1))[0]
    return tb_residual(
        logps, micro["base_per_token_logps"], micro["completion_mask"], micro["group_log_z"].detach(), trainer.alpha
    )


# ---------------------------------------------------------------------------- options that cut the target
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mask_truncated_completions=True), "mask_truncated_completions=True"),
        (dict(top_k=5), "top_k=5"),
        (dict(top_p=0.9), "top_p=0.9"),
        (dict(min_p=0.05), "min_p=0.05"),
        (dict(generation_kwargs={"typical_p": 0.5}), "typical_p=0.5"),
    ],
)
def test_options_that_leave_the_target_undetermined_warn_once(tiny_model_dir, tmp_path, kwargs, match):
    with pytest.warns(UserWarning, match=match) as record:
        PowerFlowTrainer(
            model=tiny_model_dir, args=powerflow_args(tmp_path, **kwargs), train_dataset=tiny_prompt_dataset()
        )
    assert sum(match in str(w.message) for w in record) == 1


def test_full_support_sampling_does_not_warn(tiny_model_dir, tmp_path):
    args = powerflow_args(tmp_path, temperature=0.7, repetition_penalty=1.1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset())
    assert not [w for w in record if "support" in str(w.message) or "truncated" in str(w.message)]


# ------------------------------------------------------------------------------------------------ smaller breaks
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_base_of_an_in_memory_policy_is_that_policy(tiny_model_dir, tmp_path, beta):
    """A policy passed as an object (edited in memory after loading) is its own base, for beta = 0 and beta != 0
    alike; GRPOTrainer would reload the reference from the path when beta != 0."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)
    edited = model.lm_head.weight.detach().clone()
    trainer = PowerFlowTrainer(
        model=model, args=powerflow_args(tmp_path, beta=beta), train_dataset=tiny_prompt_dataset()
    )
    assert trainer.beta == beta and trainer.args.beta == beta
    base = trainer.accelerator.unwrap_model(trainer.ref_model)
    torch.testing.assert_close(base.lm_head.weight, edited)
    trainer.train()
    if beta:
        assert logged(trainer, "kl")


def test_head_sits_beside_the_lm_head(tiny_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, args=powerflow_args(tmp_path), train_dataset=tiny_prompt_dataset()
    )
    assert trainer.log_z_head.out.weight.device == trainer.model.get_output_embeddings().weight.device


def test_model_card_cites_powerflow(tiny_model_dir, tmp_path):
    trainer = PowerFlowTrainer(
        model=tiny_model_dir, args=powerflow_args(tmp_path), train_dataset=tiny_prompt_dataset()
    )
    trainer.create_model_card(model_name="tiny-powerflow")
    card = (tmp_path / "README.md").read_text()
    assert "2603.18363" in card and "2402.03300" not in card
    assert "PowerFlow: Unlocking the Dual Nature of LLMs via Principled Distribution Matching" in card
    # a local base is named by its directory, not as the hub id None (TRL's card without the override)
    assert "huggingface.co/None" not in card and f"`{tiny_model_dir}`" in card


def test_metrics_average_only_completions_with_tokens(tiny_model_dir, tmp_path):
    """With most completions truncated and masked, `completion_length` and `log_z_mean` describe the completions in the
    loss: lengths of kept rows are >= 1 (a masked row would pull the mean towards 0)."""
    args = powerflow_args(tmp_path, mask_truncated_completions=True, max_completion_length=3, max_steps=3)
    with pytest.warns(UserWarning):
        trainer = PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset())
    trainer.train()
    assert max(logged(trainer, "powerflow/frac_no_tokens")) > 0
    assert all(length >= 1.0 for length in logged(trainer, "powerflow/completion_length"))


def test_entropy_is_logged_at_the_sampling_temperature(tiny_model_dir, tmp_path):
    """GRPO logs the sampler's entropy (logits / T); PowerFlow must log the same while its loss uses T = 1."""
    temperature = 0.5
    args = powerflow_args(tmp_path, temperature=temperature, gradient_checkpointing=False, disable_dropout=True)
    trainer = PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset(n=8))
    batch = generation_batch(trainer, 4)
    trainer.current_gradient_accumulation_steps = 1
    trainer._metrics["train"].clear()
    trainer._compute_loss(trainer.model, batch)
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        n = batch["completion_ids"].size(1)
        logits = trainer.model(input_ids=ids, attention_mask=attention).logits[:, -n - 1 : -1].float()
        mask = batch["completion_mask"].float()

        def entropy(t):
            logp = torch.log_softmax(logits / t, -1)
            return ((-(logp.exp() * logp).sum(-1)) * mask).sum().item() / mask.sum().item()

    logged_entropy = trainer._metrics["train"]["entropy"][0]
    assert logged_entropy == pytest.approx(entropy(temperature), rel=1e-5)
    assert abs(entropy(temperature) - entropy(1.0)) > 1e-3  # the two temperatures are distinguishable


def test_completions_table_shows_tb_columns_not_advantages(tiny_model_dir, tmp_path, monkeypatch):
    """The parquet table keeps full precision; the console sample shows w, log Z', r with 2 decimals, as GRPO prints
    its rewards (seen unrounded before)."""
    import pandas as pd
    import trl.trainer.utils

    printed = []
    monkeypatch.setattr(trl.trainer.utils, "print_prompt_completions_sample", lambda *a: printed.append(a[-1]))
    args = powerflow_args(tmp_path, log_completions=True, num_completions_to_print=2, num_iterations=2, max_steps=2)
    trainer = PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset(n=8))
    trainer.train()
    assert printed and all(v == round(v, 2) for extra in printed for k in ("w", "log_z", "residual") for v in extra[k])
    table = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
    assert "advantage" not in table.columns
    assert {"w", "log_z", "residual", "prompt", "completion"} <= set(table.columns)
    assert len(table) == args.generation_batch_size
    assert table[["w", "log_z", "residual"]].notna().all().all()  # every completion kept tokens (no masking)
    assert ((table["w"] >= 1 - trainer.epsilon_low - 1e-6) & (table["w"] <= 1 + trainer.epsilon_high + 1e-6)).all()
    assert table["residual"].abs().max() > 0


def test_blank_prompts_fail_at_construction(tiny_model_dir, tmp_path):
    """The Python API checks prompts like the CLI does (trl_powerflow.data.check_prompt_dataset), before generation."""
    from datasets import Dataset

    with pytest.raises(ValueError, match="row 1"):
        PowerFlowTrainer(
            model=tiny_model_dir,
            args=powerflow_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": ["What is 1 + 1?", "   "]}),
        )


def test_entropy_at_temperature_equals_grpo_with_logit_softcapping(tiny_model_dir, tmp_path):
    """The logged entropy at T = 0.7 on a model whose config softcaps its logits (Gemma-2/3 style
    `final_logit_softcapping`, which TRL's fused head applies): PowerFlow's value equals GRPOTrainer's on the same
    micro-batch. Seen to fail when PowerFlow projected the hidden states through the bare LM head (no softcap)."""
    import json
    import shutil

    model_dir = tmp_path / "softcapped"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["final_logit_softcapping"] = 0.1
    (model_dir / "config.json").write_text(json.dumps(config))
    common = dict(temperature=0.7, per_device_train_batch_size=4, gradient_checkpointing=False, disable_dropout=True)
    pf = PowerFlowTrainer(
        model=str(model_dir), args=powerflow_args(tmp_path / "pf", **common), train_dataset=tiny_prompt_dataset(n=8)
    )
    grpo_args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"), max_completion_length=8, num_generations=4, bf16=False, use_cpu=True,
        report_to=[], save_strategy="no", seed=0, **common,
    )  # fmt: skip
    grpo = GRPOTrainer(
        model=str(model_dir), reward_funcs=zero_reward, args=grpo_args, train_dataset=tiny_prompt_dataset(n=8)
    )
    batch = rows(generation_batch(pf, 4), slice(0, 4))
    for trainer in (pf, grpo):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
    grpo._compute_loss(grpo.model, {**batch, "advantages": torch.zeros(4)})
    pf._compute_loss(pf.model, batch)
    ours, theirs = pf._metrics["train"]["entropy"][-1], grpo._metrics["train"]["entropy"][-1]
    assert ours == pytest.approx(theirs, rel=1e-5)
    # control: the softcap matters here (entropy without it is far off)
    with torch.no_grad():
        hidden = pf.model.model(
            input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
            attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
        ).last_hidden_state
        n, mask = batch["completion_ids"].size(1), batch["completion_mask"].float()
        logp = torch.log_softmax(pf.model.lm_head(hidden[:, -n - 1 : -1]).float() / 0.7, -1)
        bare = ((-(logp.exp() * logp).sum(-1)) * mask).sum() / mask.sum()
    assert abs(bare.item() - theirs) > 100 * 1e-5 * theirs  # 100x the tolerance above


def test_kl_at_temperature_one_uses_the_models_own_log_probs(tiny_model_dir, tmp_path):
    """`kl_at_temperature_one=True` at T = 0.7: the KL term's k3 uses the temperature-1 log-probs (computed here by a
    plain forward), not GRPO's at T (the value is checked through the logged `kl`, the term's per-token mean; its
    gradient path is the T = 1 one that the GRPO-parity test checks at T = 1). Seen to fail with the option ignored
    (the term then uses the log-probs at T)."""
    args = powerflow_args(
        tmp_path, temperature=0.7, beta=0.1, kl_at_temperature_one=True, gradient_checkpointing=False,
        disable_dropout=True, log_z_init=0.0,
    )  # fmt: skip
    trainer = PowerFlowTrainer(model=tiny_model_dir, args=args, train_dataset=tiny_prompt_dataset(n=8))
    assert not trainer.kl_term.at_t
    batch = generation_batch(trainer, 4)
    perturb(trainer.model)
    trainer.current_gradient_accumulation_steps = 1
    trainer._metrics["train"].clear()
    trainer._compute_loss(trainer.model, batch)
    logged = trainer._metrics["train"]["kl"][-1]  # the term's per-token mean k3, as GRPO logs it
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        n, mask = batch["completion_ids"].size(1), batch["completion_mask"].float()
        logits = trainer.model(input_ids=ids, attention_mask=attention).logits[:, -n - 1 : -1].float()
        policy = torch.log_softmax(logits, -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
        delta = batch["base_per_token_logps"] - policy
        kl_t1 = ((torch.exp(delta) - delta - 1) * mask).sum() / mask.sum()
        policy_t = torch.log_softmax(logits / 0.7, -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    assert kl_t1.item() > 0 and (policy_t - policy).abs().max() > 0.01  # the two temperatures differ here
    assert logged == pytest.approx(kl_t1.item(), rel=1e-5)
