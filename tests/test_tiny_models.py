import json
from pathlib import Path

import pytest
import torch

from trl_powerflow.toys import tiny_models
from trl_powerflow.toys.model_cache import SETTINGS_FILE
from trl_powerflow.toys.tiny_models import (
    build_tiny_model,
    build_tiny_tokenizer,
    save_tiny_model,
    tiny_prompt_dataset,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def saved_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny_model(root / arch, arch=arch) for arch in tiny_models.ARCHS}


def test_tokenizer_round_trip_and_special_tokens(tokenizer):
    assert len(tokenizer) == 512
    text = "What is 12 + 7? The answer is \\boxed{19}.\n  Héllo, wörld!"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id is not None
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left" and tokenizer.truncation_side == "left"
    # special tokens are single ids
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert tokenizer(token)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]


def test_chat_template(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == rendered + "<|im_start|>assistant\n"


def test_tokenizer_deterministic(tokenizer):
    other = build_tiny_tokenizer()
    assert other.get_vocab() == tokenizer.get_vocab()
    assert other.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_save_reload_generate(arch, saved_dirs, tokenizer):
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    path = saved_dirs[arch]
    assert isinstance(path, str)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch and model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    reference = build_tiny_model(tokenizer, arch=arch).state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(loaded[name], tensor), name

    loaded_tokenizer = AutoTokenizer.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    text = "<|im_start|>user\nWhat is 31 + 4? Put the final answer in \\boxed{}.<|im_end|>\n"
    expected = tokenizer(text)["input_ids"]
    assert loaded_tokenizer(text)["input_ids"] == expected
    assert processor(text)["input_ids"] == expected
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.padding_side == "left"

    prompt = loaded_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**prompt, max_new_tokens=4, do_sample=True)
    assert out.shape[0] == 1 and prompt["input_ids"].shape[1] < out.shape[1] <= prompt["input_ids"].shape[1] + 4


def test_model_init_is_seeded_and_leaves_global_rng(tokenizer):
    state = torch.random.get_rng_state()
    a = build_tiny_model(tokenizer, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_model(tokenizer, seed=1)
    c = build_tiny_model(tokenizer, seed=2)
    weight = "model.embed_tokens.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


def test_settings_skip(tmp_path, monkeypatch):
    path = save_tiny_model(tmp_path, num_hidden_layers=1, hidden_size=16)
    weights = Path(path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    settings = json.loads((Path(path) / SETTINGS_FILE).read_text())
    assert settings["num_hidden_layers"] == 1 and settings["hidden_size"] == 16

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the settings match")

    with monkeypatch.context() as m:
        m.setattr(tiny_models, "build_tiny_model", fail)
        m.setattr(tiny_models, "build_tiny_tokenizer", fail)
        assert save_tiny_model(tmp_path, num_hidden_layers=1, hidden_size=16) == path
    assert weights.stat().st_mtime_ns == stamp

    # different settings rebuild
    save_tiny_model(tmp_path, num_hidden_layers=1, hidden_size=16, seed=3)
    assert json.loads((Path(path) / SETTINGS_FILE).read_text())["seed"] == 3
    # a missing weights file rebuilds too
    weights.unlink()
    save_tiny_model(tmp_path, num_hidden_layers=1, hidden_size=16, seed=3)
    assert weights.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tiny_model_tmp_")] == []


@pytest.mark.parametrize("conversational", [True, False])
def test_prompt_dataset(conversational):
    ds = tiny_prompt_dataset(n=8, conversational=conversational, seed=0)
    assert len(ds) == 8 and {"prompt", "answer"} <= set(ds.column_names)
    assert ds.to_list() == tiny_prompt_dataset(n=8, conversational=conversational, seed=0).to_list()
    assert ds.to_list() != tiny_prompt_dataset(n=8, conversational=conversational, seed=1).to_list()
    for row in ds:
        if conversational:
            assert row["prompt"][0]["role"] == "user"
            question = row["prompt"][0]["content"]
        else:
            question = row["prompt"]
        assert question.endswith("Put the final answer in \\boxed{}.")
        expression = question.removeprefix("What is ").split("?")[0]
        assert str(eval(expression)) == row["answer"]  # simple "a op b" integer arithmetic


def test_unknown_arch(tokenizer):
    with pytest.raises(ValueError, match="qwen2"):
        build_tiny_model(tokenizer, arch="gpt2")


def test_cli(tmp_path, capsys):
    from trl_powerflow.cli import make_tiny_model as module

    out_dir = tmp_path / "cli"
    module.main(["--output_dir", str(out_dir), "--arch", "llama", "--hidden_size", "16", "--num_hidden_layers", "1"])
    assert capsys.readouterr().out.strip() == str(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 16
