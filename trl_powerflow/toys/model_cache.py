"""The one save/cache path of the offline tiny models (`tiny_models.py` and the enumerable toy).

`save_cached(output_dir, settings, build)` saves `build()`'s (model, tokenizer or processor) unless the directory
already holds a complete save with the same `settings`. It writes into a sibling temp dir and moves the files in one
by one (each move atomic) with the settings file last, after removing the old one: a concurrent or interrupted call
never leaves a directory that looks complete. `seeded_model` builds a float32 model from a seed without touching the
global RNG.
"""

import json
import os
import shutil
import tempfile

import torch

SETTINGS_FILE = "tiny_model_settings.json"
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")


def seeded_model(model_cls, config, seed: int):
    """`model_cls(config)` initialised under `torch.manual_seed(seed)` (global RNG restored), in float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model = model.to(torch.float32)
    model.config.dtype = torch.float32
    return model


def is_saved(output_dir: str, settings: dict) -> bool:
    """Whether `output_dir` holds every required file and a settings file equal to `settings`."""
    if not all(os.path.isfile(os.path.join(output_dir, name)) for name in REQUIRED_FILES + (SETTINGS_FILE,)):
        return False
    try:
        with open(os.path.join(output_dir, SETTINGS_FILE)) as f:
            return json.load(f) == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        return False


def save_cached(output_dir, settings: dict, build) -> str:
    """Save `build()`'s (model, tokenizer) into `output_dir` unless already saved with `settings`; returns the dir."""
    output_dir = os.fspath(output_dir)
    if is_saved(output_dir, settings):
        return output_dir
    model, tokenizer = build()
    os.makedirs(output_dir, exist_ok=True)
    try:
        os.remove(os.path.join(output_dir, SETTINGS_FILE))
    except FileNotFoundError:
        pass
    tmp_dir = tempfile.mkdtemp(prefix=".tiny_model_tmp_", dir=output_dir)
    try:
        model.save_pretrained(tmp_dir)
        if not os.path.isfile(os.path.join(tmp_dir, "generation_config.json")):  # classifiers save none
            from transformers import GenerationConfig

            token_ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
            GenerationConfig(**token_ids).save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        with open(os.path.join(tmp_dir, SETTINGS_FILE), "w") as f:
            json.dump(settings, f, indent=2)
        names = sorted(n for n in os.listdir(tmp_dir) if n != SETTINGS_FILE) + [SETTINGS_FILE]
        for name in names:
            os.replace(os.path.join(tmp_dir, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return output_dir
