"""BuPO: config validation, layer-k log-probs against the hand-computed logit lens, the layer-k loss against the
plain trainer's loss on a model truncated to k layers (whose final policy *is* the layer-k policy), which
parameters the layer-k loss reaches, the reference staying final-layer, and the switch to the full model."""

import copy

import pytest
import torch
from datasets import Dataset
from helpers import tiny_run_kwargs
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
from trl_powerflow.bupo import BuPOGRPOConfig, BuPOGRPOTrainer, BuPOPowerFlowConfig, BuPOPowerFlowTrainer
from trl_powerflow.toys.tiny_models import save_tiny_model, tiny_prompt_dataset

NUM_LAYERS = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(
        str(tmp_path_factory.mktemp("bupo") / "qwen2"), num_hidden_layers=NUM_LAYERS, initializer_range=0.2
    )


def reward(completions, **kwargs):
    return [float(len(str(c)) % 3) for c in completions]


def common(tmp_path, **kwargs):
    """The tiny-run settings with completions of at most 6 tokens and 3 steps."""
    return tiny_run_kwargs(tmp_path, **{"max_completion_length": 6, "max_steps": 3, **kwargs})


def data(n=8):
    return Dataset.from_dict({"prompt": tiny_prompt_dataset(n=n)["prompt"]})


def make_trainer(kind, model, tmp_path, callbacks=None, **kwargs):
    if kind == "grpo":
        args = BuPOGRPOConfig(**common(tmp_path, **kwargs))
        return BuPOGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data(), callbacks=callbacks)
    args = BuPOPowerFlowConfig(**common(tmp_path, **kwargs))
    return BuPOPowerFlowTrainer(model=model, args=args, train_dataset=data(), callbacks=callbacks)


def generation_batch(trainer):
    trainer.model.train()
    rows = [data()[i] for i in range(trainer.args.generation_batch_size)]
    return trainer._generate_and_score_completions(rows)


def ids_and_mask(batch):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    return ids, mask


@torch.no_grad()
def lens_logps(model, batch, layer, temperature=1.0):
    """Hand-computed logit lens: hook on decoder layer `layer`, RMSNorm written out, unembedding, log_softmax / T."""
    captured = {}
    hook = model.model.layers[layer - 1].register_forward_hook(
        lambda m, i, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o)
    )
    ids, mask = ids_and_mask(batch)
    model(input_ids=ids, attention_mask=mask)
    hook.remove()
    n = batch["completion_ids"].size(1)
    h = captured["h"][:, -n - 1 : -1].double()
    norm = model.model.norm
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()
    logits = h @ model.get_output_embeddings().weight.double().T / temperature
    logps = torch.log_softmax(logits, -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return logps * batch["completion_mask"]


@torch.no_grad()
def final_logps(model, batch):
    ids, mask = ids_and_mask(batch)
    n = batch["completion_ids"].size(1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, -n - 1 : -1].double()
    logps = torch.log_softmax(logits, -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return logps * batch["completion_mask"]


# ------------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("config_cls", [BuPOGRPOConfig, BuPOPowerFlowConfig])
@pytest.mark.parametrize(
    "fields, name",
    [
        ({"bupo_layer": 0, "bupo_steps": 1}, "bupo_layer"),
        ({"bupo_layer": -1, "bupo_steps": 1}, "bupo_layer"),
        ({"bupo_layer": True, "bupo_steps": 1}, "bupo_layer"),
        ({"bupo_layer": 1.5, "bupo_steps": 1}, "bupo_layer"),
        ({"bupo_layer": 1, "bupo_steps": -1}, "bupo_steps"),
        ({"bupo_layer": 1, "bupo_steps": 2.0}, "bupo_steps"),
        ({"bupo_layer": None, "bupo_steps": 3}, "bupo_layer"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(tmp_path, config_cls, fields, name):
    with pytest.raises(ValueError, match=f"`{name}"):
        config_cls(**common(tmp_path, **fields))


def test_config_defaults_and_help(tmp_path):
    import dataclasses

    for config_cls in (BuPOGRPOConfig, BuPOPowerFlowConfig):
        config = config_cls(**common(tmp_path))
        assert config.bupo_layer is None and config.bupo_steps == 0
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        assert fields["bupo_layer"].metadata["help"] and fields["bupo_steps"].metadata["help"]


@pytest.mark.parametrize("kind", ["grpo", "powerflow"])
def test_layer_checked_against_the_model_at_init(model_dir, tmp_path, kind):
    with pytest.raises(ValueError, match=f"`bupo_layer={NUM_LAYERS + 1}`.*{NUM_LAYERS} decoder layers"):
        make_trainer(kind, model_dir, tmp_path, bupo_layer=NUM_LAYERS + 1, bupo_steps=1)
    with pytest.raises(TypeError, match="bupo_layer"):
        BuPOGRPOTrainer(
            model=model_dir, reward_funcs=reward, args=GRPOConfig(**common(tmp_path)), train_dataset=data()
        )


# ------------------------------------------------------------------------------------------ log-probs and losses
@pytest.mark.parametrize("kind", ["grpo", "powerflow"])
def test_layer_k_logps_match_hand_computed_lens_and_reference_stays_final(model_dir, tmp_path, kind):
    # GRPO scores its policy at the sampling temperature, PowerFlow at temperature 1; beta > 0 gives GRPO a reference
    trainer = make_trainer(kind, model_dir, tmp_path, bupo_layer=1, bupo_steps=2, temperature=0.7, beta=0.1)
    batch = generation_batch(trainer)
    assert trainer.bupo_active()
    ids, mask = ids_and_mask(batch)
    n = batch["completion_ids"].size(1)
    got, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, n, compute_entropy=True)
    temperature = 0.7 if kind == "grpo" else 1.0
    expected = lens_logps(trainer.model, batch, layer=1, temperature=temperature)
    torch.testing.assert_close(got.double() * batch["completion_mask"], expected, atol=1e-5, rtol=1e-5)
    assert entropies.shape == got.shape and (entropies >= 0).all()
    # the reference / base model is the full final-layer starting model
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    key = "ref_per_token_logps" if kind == "grpo" else "base_per_token_logps"
    reference = final_logps(base, batch)
    if kind == "grpo":
        reference = None  # GRPO's reference is scored at the sampling temperature: compare with its own head
        trainer._bupo_force_final = True
        reference, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, n)
        trainer._bupo_force_final = False
        reference = reference.double() * batch["completion_mask"]
        assert not torch.allclose(reference, expected, atol=1e-3)
    torch.testing.assert_close(batch[key].double() * batch["completion_mask"], reference, atol=1e-5, rtol=1e-5)
    # after the BuPO steps the same call scores the final policy again
    trainer.state.global_step = 2
    final, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, n)
    plain = final_logps(trainer.model, batch) if kind == "powerflow" else None
    if plain is not None:
        torch.testing.assert_close(final.double() * batch["completion_mask"], plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(final.double() * batch["completion_mask"], expected, atol=1e-3)


def test_last_layer_bupo_equals_plain_training(model_dir, tmp_path):
    """bupo_layer = num_hidden_layers: the layer-k path reproduces GRPO's own fused log-probs exactly."""
    trainer = make_trainer("grpo", model_dir, tmp_path, bupo_layer=NUM_LAYERS, bupo_steps=1, temperature=0.7)
    batch = generation_batch(trainer)
    ids, mask = ids_and_mask(batch)
    n = batch["completion_ids"].size(1)
    lens, lens_entropy, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, mask, n, compute_entropy=True
    )
    trainer._bupo_force_final = True
    fused, fused_entropy, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, mask, n, compute_entropy=True
    )
    torch.testing.assert_close(lens, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens_entropy, fused_entropy, atol=1e-5, rtol=1e-5)


def truncated_copy(model, layers):
    """The same weights with only the first `layers` decoder layers: its final policy is the layer-k policy."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    config.layer_types = config.layer_types[:layers]
    small = type(model)(config)
    missing, unexpected = small.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(int(key.split(".")[2]) >= layers for key in unexpected)
    small.generation_config = copy.deepcopy(model.generation_config)
    return small


@pytest.mark.parametrize("kind", ["grpo", "powerflow"])
def test_layer_k_loss_equals_plain_loss_of_the_truncated_model(model_dir, tmp_path, kind):
    k = 2
    extra = dict(temperature=0.7) if kind == "grpo" else dict(log_z_estimator="group")
    trainer = make_trainer(kind, model_dir, tmp_path / "bupo", bupo_layer=k, bupo_steps=5, **extra)
    small_model = truncated_copy(AutoModelForCausalLM.from_pretrained(model_dir), k)
    if kind == "grpo":
        plain = GRPOTrainer(
            model=small_model,
            reward_funcs=reward,
            args=GRPOConfig(**common(tmp_path / "p", **extra)),
            train_dataset=data(),
        )
    else:
        args = PowerFlowConfig(**common(tmp_path / "p", **extra))
        plain = PowerFlowTrainer(model=small_model, args=args, train_dataset=data())
    batch = generation_batch(trainer)  # the group log Z (PowerFlow) is computed from the layer-k policy here
    for t in (trainer, plain):
        t.model.train()
        t.current_gradient_accumulation_steps = 1
        t.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    if kind == "powerflow":  # old-policy log-probs (used by the group log Z and the weight w) are layer-k ones
        torch.testing.assert_close(
            trainer._per_token_logps(batch, base=False),
            plain._per_token_logps(batch, base=False),
            atol=1e-5,
            rtol=1e-5,
        )
    plain_loss = plain.compute_loss(plain.model, batch)
    plain_loss.backward()
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-4, abs=1e-6)
    assert abs(loss.item()) > 1e-6 or kind == "grpo"
    assert trainer.model.model.layers[0].mlp.down_proj.weight.grad.abs().max() > 1e-6
    small_grads = dict(plain.model.named_parameters())
    compared = 0
    for name, param in trainer.model.named_parameters():
        if name in small_grads:
            torch.testing.assert_close(param.grad, small_grads[name].grad, atol=1e-6, rtol=1e-4)
            compared += 1
        else:
            assert param.grad is None, name  # layers above k
    assert compared == len(small_grads)


class GradRecorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0})


@pytest.mark.parametrize("kind", ["grpo", "powerflow"])
def test_only_layers_up_to_k_get_gradient_during_bupo_then_all(model_dir, tmp_path, kind):
    k, steps = 1, 2
    recorder = GradRecorder()
    trainer = make_trainer(
        kind, model_dir, tmp_path, callbacks=[recorder], bupo_layer=k, bupo_steps=steps, max_steps=3
    )
    trainer.train()
    assert len(recorder.steps) == 3
    names = [n for n, _ in trainer.model.named_parameters()]
    above = [n for n in names if any(f"layers.{i}." in n for i in range(k, NUM_LAYERS))]
    at_or_below = [n for n in names if any(f"layers.{i}." in n for i in range(k))]
    shared = ["model.embed_tokens.weight", "model.norm.weight"]  # tied embedding / unembedding, final norm
    for step, with_grad in enumerate(recorder.steps):
        assert set(at_or_below + shared) <= with_grad, step
        if step < steps:
            assert not (set(above) & with_grad), (step, sorted(set(above) & with_grad))
        else:
            assert set(above) <= with_grad, step
    if kind == "powerflow":  # the log-partition head trains in both phases
        assert all(any(n.startswith("log_z_head.") for n in s) for s in recorder.steps)
    active = [e["bupo/active"] for e in trainer.state.log_history if "bupo/active" in e]
    assert active == [1.0, 1.0, 0.0]


def test_generations_are_not_reused_across_the_switch(model_dir, tmp_path):
    # one generation batch serves 2 optimiser steps; BuPO ends after step 1, so step 2 needs a fresh batch
    def count_generations(trainer):
        calls = []
        original = trainer._generate_and_score_completions
        trainer._generate_and_score_completions = lambda inputs: calls.append(1) or original(inputs)
        trainer.train()
        return len(calls)

    kwargs = dict(steps_per_generation=2, max_steps=2, per_device_train_batch_size=4, num_generations=4)
    with_bupo = make_trainer("powerflow", model_dir, tmp_path / "a", bupo_layer=1, bupo_steps=1, **kwargs)
    assert with_bupo.args.gradient_accumulation_steps == 1
    without = make_trainer("powerflow", model_dir, tmp_path / "b", **kwargs)
    assert count_generations(without) == 1
    assert count_generations(with_bupo) == 2


def test_peft_reference_is_the_final_layer_base(model_dir, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    args = BuPOPowerFlowConfig(**common(tmp_path, bupo_layer=1, bupo_steps=2, beta=0.1))
    trainer = BuPOPowerFlowTrainer(model=model_dir, args=args, train_dataset=data(), peft_config=peft_config)
    batch = generation_batch(trainer)
    base = AutoModelForCausalLM.from_pretrained(model_dir)  # LoRA starts at zero: the base is the starting model
    reference = final_logps(base, batch)
    torch.testing.assert_close(
        batch["base_per_token_logps"].double() * batch["completion_mask"], reference, atol=1e-5, rtol=1e-5
    )
    ids, mask = ids_and_mask(batch)
    n = batch["completion_ids"].size(1)
    policy, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, n)
    expected = lens_logps(trainer.model.get_base_model(), batch, layer=1)
    torch.testing.assert_close(policy.double() * batch["completion_mask"], expected, atol=1e-5, rtol=1e-5)
    trainer.train()  # runs through the switch under PEFT
    assert [e["bupo/active"] for e in trainer.state.log_history if "bupo/active" in e] == [1.0, 1.0, 0.0]
