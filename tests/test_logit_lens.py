"""Logit lens and LayerEntropyCallback: per-layer entropies against a hand-computed reference (hooks on the decoder
layers, RMSNorm and unembedding written out), the final layer against the model's own next-token entropy, logging
inside GRPOTrainer / PowerFlowTrainer, and the plotting script."""

import json
import os

import pytest
import torch
from datasets import Dataset
from helpers import tiny_run_kwargs
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
from trl_powerflow.bupo.logit_lens import LayerEntropyCallback, entropy_history, layer_entropies, lens_parts
from trl_powerflow.toys.tiny_models import save_tiny_model, tiny_prompt_dataset


@pytest.fixture(scope="module")
def lens_model_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("lens")
    return {
        "qwen2": save_tiny_model(str(base / "qwen2"), arch="qwen2", num_hidden_layers=3, initializer_range=0.2),
        # untied unembedding and a larger init, so the layers' policies differ clearly
        "llama": save_tiny_model(
            str(base / "llama"), arch="llama", num_hidden_layers=3, tie_word_embeddings=False, initializer_range=0.2
        ),
    }


def entropy(logits):
    logps = torch.log_softmax(logits.double(), -1)
    return -(logps.exp() * logps).sum(-1)


def rms_norm(x, norm):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()


@torch.no_grad()
def reference_entropies(model, input_ids, attention_mask, completion_mask):
    """Layer outputs captured by forward hooks, final RMSNorm and unembedding applied by hand (float64)."""
    outputs = {}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: outputs.__setitem__(0, o))]
    for index, layer in enumerate(model.model.layers):
        hooks.append(
            layer.register_forward_hook(
                lambda m, i, o, k=index + 1: outputs.__setitem__(k, o[0] if isinstance(o, tuple) else o)
            )
        )
    final_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    for hook in hooks:
        hook.remove()
    width = completion_mask.size(1)
    weight = model.get_output_embeddings().weight.double()
    mask = completion_mask.double()
    values = []
    for layer in range(len(model.model.layers) + 1):
        hidden = rms_norm(outputs[layer][:, -width - 1 : -1], model.model.norm)
        values.append((entropy(hidden @ weight.T) * mask).sum() / mask.sum())
    final = (entropy(final_logits[:, -width - 1 : -1]) * mask).sum() / mask.sum()
    return torch.stack(values), final


def random_batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0  # left padding
    completion_mask = torch.ones(3, 4, dtype=torch.long)
    completion_mask[1, 3:] = 0
    return input_ids, attention_mask, completion_mask


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_layer_entropies_match_hand_computed_logit_lens(lens_model_dirs, arch):
    model = AutoModelForCausalLM.from_pretrained(lens_model_dirs[arch]).eval()
    parts = lens_parts(model)
    assert parts.num_layers == 3 and parts.norm is model.model.norm and parts.last_is_normed
    input_ids, attention_mask, completion_mask = random_batch(model.config.vocab_size)
    got = layer_entropies(model, input_ids, attention_mask, completion_mask).double()
    expected, final = reference_entropies(model, input_ids, attention_mask, completion_mask)
    assert got.shape == (4,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the last internal policy is the model's own next-token distribution
    assert got[-1].item() == pytest.approx(final.item(), abs=1e-5)
    # the layers' policies are different distributions (the lens reads different hidden states)
    assert (expected[:-1] - expected[-1]).abs().max() > 1e-3


def make_callback(tokenizer, **kwargs):
    prompts = tiny_prompt_dataset(n=2, seed=3)["prompt"]
    defaults = dict(every_steps=1, num_samples=2, max_new_tokens=6)
    defaults.update(kwargs)
    return LayerEntropyCallback(tokenizer, prompts, **defaults)


def test_callback_measure_on_fixed_completions_matches_reference(lens_model_dirs):
    model = AutoModelForCausalLM.from_pretrained(lens_model_dirs["llama"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(lens_model_dirs["llama"])
    callback = make_callback(tokenizer, resample=False)
    values = callback.measure(model)
    assert callback.measure(model) == values  # fixed probe completions: same model, same values
    totals, count = 0.0, 0.0
    for input_ids, attention_mask, completion_mask in callback._fixed_batches:
        expected, _ = reference_entropies(model, input_ids, attention_mask, completion_mask)
        totals = totals + expected * completion_mask.sum()
        count += float(completion_mask.sum())
    torch.testing.assert_close(torch.tensor(values, dtype=torch.float64), totals / count, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="every_steps"):
        make_callback(tokenizer, every_steps=0)


def train_with_callback(trainer_name, model_dir, tmp_path, every_steps, max_steps=2):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    callback = make_callback(tokenizer, every_steps=every_steps)
    common = tiny_run_kwargs(tmp_path, max_completion_length=6, max_steps=max_steps)
    data = Dataset.from_dict({"prompt": tiny_prompt_dataset(n=8)["prompt"]})
    if trainer_name == "grpo":
        trainer = GRPOTrainer(
            model=model_dir,
            reward_funcs=lambda completions, **kw: [float(len(str(c)) % 3) for c in completions],
            args=GRPOConfig(**common),
            train_dataset=data,
            callbacks=[callback],
        )
    else:
        trainer = PowerFlowTrainer(
            model=model_dir, args=PowerFlowConfig(**common), train_dataset=data, callbacks=[callback]
        )
    trainer.train()
    return trainer, callback


@pytest.mark.parametrize("trainer_name", ["grpo", "powerflow"])
def test_callback_logs_every_layer_into_the_trainer_logs(lens_model_dirs, tmp_path, trainer_name):
    trainer, callback = train_with_callback(trainer_name, lens_model_dirs["qwen2"], tmp_path, every_steps=1)
    keys = [f"layer_entropy/{layer}" for layer in range(4)]
    entries = [e for e in trainer.state.log_history if keys[0] in e]
    assert [e["step"] for e in entries] == [0, 1, 2]
    for entry in entries:
        assert all(key in entry for key in keys)
        assert all(0.0 <= entry[key] <= torch.log(torch.tensor(512.0)).item() + 1e-4 for key in keys)
    assert all("loss" in e for e in entries[1:])  # logged beside the step's loss
    assert [h["step"] for h in callback.history] == [0, 1, 2]
    steps, series = entropy_history(trainer.state.log_history)
    assert steps == [0, 1, 2] and sorted(series) == [0, 1, 2, 3]


def test_callback_every_steps_and_plot_script(lens_model_dirs, tmp_path):
    trainer, _ = train_with_callback("grpo", lens_model_dirs["qwen2"], tmp_path, every_steps=2, max_steps=3)
    entries = [e for e in trainer.state.log_history if "layer_entropy/0" in e]
    assert [e["step"] for e in entries] == [0, 2]
    history_file = tmp_path / "history.json"
    history_file.write_text(json.dumps({"log_history": trainer.state.log_history}))
    from trl_powerflow.cli import plot_layer_entropy

    output = plot_layer_entropy.main(
        ["--run", f"grpo={history_file}", "--mark", "2", "--output", str(tmp_path / "e.png")]
    )
    assert os.path.getsize(output) > 1000
