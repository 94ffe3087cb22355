r"""Tiny causal LMs, tokenizers and prompt datasets built fully offline, for tests and smoke runs.

The tokenizer is a byte-level BPE trained on a small corpus generated in code; the models are randomly initialised
Qwen2 / Llama decoders with a seeded init. Everything is deterministic.
"""

import random

from .model_cache import save_cached, seeded_model

__all__ = [
    "ARCHS",
    "MOE_ARCHS",
    "REWARD_ARCHS",
    "build_tiny_model",
    "build_tiny_moe_model",
    "build_tiny_reward_model",
    "build_tiny_tokenizer",
    "build_tiny_vlm",
    "save_tiny_model",
    "save_tiny_moe_model",
    "save_tiny_reward_model",
    "save_tiny_vlm",
    "tiny_image_prompt_dataset",
    "tiny_prompt_dataset",
]

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ARCHS = ("qwen2", "llama")
_SETTINGS_FORMAT = 1  # bump when the builders change, so cached directories are rebuilt

_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A small model can still learn simple patterns.",
    "The sun rises in the east and sets in the west.",
    "Please think step by step before you answer.",
    "She opened the window and the cold air rushed in.",
    "We count the apples and then we add the pears.",
    "Every question has an answer, if you look closely.",
    "The cat sat on the mat and watched the birds.",
    "Numbers can be added, subtracted and multiplied.",
    "He wrote a short letter to his old friend.",
    "The train left the station at seven in the morning.",
    "Water boils at one hundred degrees.",
    "Read the question, then write the final answer.",
    "The library was quiet except for turning pages.",
    "A river runs through the middle of the town.",
    "They planted a tree in the garden last spring.",
    "The answer should be a single whole number.",
    "Mathematics is the language of patterns.",
    "It was a bright cold day in April.",
    "The children laughed as the kite climbed higher.",
    "Good answers are short, clear and correct.",
    "The moon was full and the night was still.",
    "Let us solve the problem one step at a time.",
    "The teacher asked a question about fractions.",
    "I like tea in the morning and coffee at noon.",
    "The robot answered every question politely.",
    "Hello! How can I help you today?",
    "Thank you, that is exactly what I needed.",
)
_CREATIVE = (
    "Write a short poem about the sea.",
    "Waves of silver whisper to the shore.",
    "Tell me a story about a brave little mouse.",
    "Once upon a time, a tiny mouse found a golden key.",
    "Describe a rainy afternoon in one line.",
    "Grey clouds hum softly while the streets shine.",
    "Stars are lanterns hung by patient hands.",
    "The forest keeps its secrets under green leaves.",
    "In the quiet of dawn, the first bird sings.",
    "A dragon slept beneath the mountain of glass.",
)
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _arithmetic(rng: random.Random) -> tuple[str, str, int]:
    op = rng.choice(sorted(_OPS))
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        if op == "-" and b > a:
            a, b = b, a
    return f"{a} {op} {b}", op, _OPS[op](a, b)


def _tokenizer_corpus() -> list[str]:
    rng = random.Random(1234)
    corpus = list(_SENTENCES) + list(_CREATIVE)
    for _ in range(120):
        expr, _, result = _arithmetic(rng)
        corpus.append(f"What is {expr}? The answer is \\boxed{{{result}}}.")
        corpus.append(f"What is {expr}? Put the final answer in \\boxed{{}}.")
    for role in ("system", "user", "assistant"):
        corpus.append(f"{role}\nYou are a helpful assistant.\n")
    return corpus


def build_tiny_tokenizer(vocab_size: int = 512):
    """Byte-level BPE trained on an inline corpus; pad `<|endoftext|>`, eos `<|im_end|>`, ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Same normalizer / pre-tokenizer as transformers' Qwen2Tokenizer, which AutoTokenizer substitutes when loading a
    # saved qwen2 model (it rebuilds the pipeline around the saved vocab/merges), so both load paths tokenize alike.
    backend = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=""))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        padding_side="left",
        truncation_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def check_heads(hidden_size: int, num_attention_heads: int, num_key_value_heads: int) -> None:
    """Raise unless hidden_size % num_attention_heads == 0 and num_attention_heads % num_key_value_heads == 0."""
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads}), "
            f"which must be divisible by num_key_value_heads ({num_key_value_heads})"
        )


def special_token_ids(tokenizer) -> dict:
    """The eos / pad / bos ids of `tokenizer`, as config and generation-config keywords."""
    return {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }


def build_tiny_model(
    tokenizer,
    arch: str = "qwen2",
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    initializer_range: float = 0.02,
    tie_word_embeddings: bool = True,
):
    """Randomly initialised float32 Qwen2 / Llama causal LM sized to `tokenizer`, seeded (global RNG untouched)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    if arch not in classes:
        raise ValueError(f"Unknown arch {arch!r}; expected one of {list(ARCHS)}")
    check_heads(hidden_size, num_attention_heads, num_key_value_heads)
    config_cls, model_cls = classes[arch]
    token_ids = special_token_ids(tokenizer)
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size if intermediate_size is not None else 4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        **token_ids,
    )
    model = seeded_model(model_cls, config, seed)
    model.generation_config = GenerationConfig(**token_ids)
    return model


def _settings(arch, hidden_size, num_hidden_layers, seed, kwargs) -> dict:
    return {
        "format": _SETTINGS_FORMAT,
        "arch": arch,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "seed": seed,
        **{k: kwargs[k] for k in sorted(kwargs)},
    }


def save_tiny_model(
    output_dir, arch: str = "qwen2", hidden_size: int = 32, num_hidden_layers: int = 2, seed: int = 0, **kwargs
) -> str:
    """Build and save a tiny tokenizer + model into `output_dir` (skipped if already saved with these settings).

    `vocab_size` in kwargs goes to `build_tiny_tokenizer`, the rest to `build_tiny_model`.
    """
    settings = _settings(arch, hidden_size, num_hidden_layers, seed, kwargs)

    def build():
        model_kwargs = dict(kwargs)
        tokenizer_kwargs = {"vocab_size": model_kwargs.pop("vocab_size")} if "vocab_size" in model_kwargs else {}
        tokenizer = build_tiny_tokenizer(**tokenizer_kwargs)
        model = build_tiny_model(
            tokenizer, arch=arch, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, seed=seed,
            **model_kwargs,
        )  # fmt: skip
        return model, tokenizer

    return save_cached(output_dir, settings, build)


def tiny_prompt_dataset(n: int = 16, conversational: bool = True, seed: int = 0):
    r"""`n` arithmetic prompts ending "Put the final answer in \boxed{}." with an `answer` column (integer as str)."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompts, answers = [], []
    for _ in range(n):
        expr, _, result = _arithmetic(rng)
        question = f"What is {expr}? Put the final answer in \\boxed{{}}."
        prompts.append([{"role": "user", "content": question}] if conversational else question)
        answers.append(str(result))
    return Dataset.from_dict({"prompt": prompts, "answer": answers})


MOE_ARCHS = ("qwen3_moe", "gpt_oss")
REWARD_ARCHS = ("qwen2", "llama")


def build_tiny_moe_model(
    tokenizer,
    arch: str = "qwen3_moe",
    hidden_size: int = 16,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    num_experts: int = 4,
    num_experts_per_tok: int = 2,
    intermediate_size: int = 32,
    max_position_embeddings: int = 512,
    seed: int = 0,
):
    """Randomly initialised float32 Mixture-of-Experts causal LM (Qwen3-MoE or GPT-OSS) sized to `tokenizer`, seeded.

    Sized like TRL's tiny MoE test models (4 experts, 2 per token). `router_aux_loss_coef` and
    `output_router_logits` keep the architecture's defaults, so the config declares the load-balancing coefficient
    and the router logits are only returned when asked for (`output_router_logits=True` in the forward call).
    """
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    if arch not in MOE_ARCHS:
        raise ValueError(f"Unknown MoE arch {arch!r}; expected one of {list(MOE_ARCHS)}")
    check_heads(hidden_size, num_attention_heads, num_key_value_heads)
    token_ids = special_token_ids(tokenizer)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        num_experts_per_tok=num_experts_per_tok,
        max_position_embeddings=max_position_embeddings,
        **token_ids,
    )
    if arch == "qwen3_moe":
        config = Qwen3MoeConfig(num_experts=num_experts, moe_intermediate_size=intermediate_size, **common)
        model_cls = Qwen3MoeForCausalLM
    else:
        # GPT-OSS defaults to YaRN scaled for a 4k -> 128k context; a plain RoPE suits a 512-token toy.
        config = GptOssConfig(
            num_local_experts=num_experts,
            head_dim=hidden_size // num_attention_heads,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            **common,
        )
        model_cls = GptOssForCausalLM
    for name in ("output_router_logits", "router_aux_loss_coef"):
        if not hasattr(config.get_text_config(), name):
            raise RuntimeError(f"{type(config).__name__} has no `{name}`: not a router-logit MoE config")
    model = seeded_model(model_cls, config, seed)
    model.generation_config = GenerationConfig(**token_ids)
    return model


def build_tiny_reward_model(tokenizer, arch: str = "qwen2", hidden_size: int = 16, num_hidden_layers: int = 2, seed=0):
    """Randomly initialised float32 sequence-classification model (one label: a scalar reward) sized to `tokenizer`."""
    from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

    classes = {
        "qwen2": (Qwen2Config, Qwen2ForSequenceClassification),
        "llama": (LlamaConfig, LlamaForSequenceClassification),
    }
    if arch not in classes:
        raise ValueError(f"Unknown reward arch {arch!r}; expected one of {list(REWARD_ARCHS)}")
    config_cls, model_cls = classes[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = seeded_model(model_cls, config, seed)
    return model


def save_tiny_moe_model(output_dir, arch: str = "qwen3_moe", hidden_size: int = 16, seed: int = 0, **kwargs) -> str:
    """Build and save the tiny tokenizer + a tiny MoE causal LM (`build_tiny_moe_model`) into `output_dir`.

    Skipped when the directory already holds one saved with these settings; `kwargs` go to `build_tiny_moe_model`.
    """
    settings = _settings(arch, hidden_size, kwargs.get("num_hidden_layers", 2), seed, {"kind": "moe", **kwargs})

    def build():
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_moe_model(tokenizer, arch=arch, hidden_size=hidden_size, seed=seed, **kwargs)
        return model, tokenizer

    return save_cached(output_dir, settings, build)


def save_tiny_reward_model(
    output_dir, arch: str = "qwen2", hidden_size: int = 16, seed: int = 0, chat_template: str | None = None
) -> str:
    """Build and save the tiny tokenizer + a tiny sequence-classification reward model into `output_dir`.

    `chat_template` replaces the tokenizer's ChatML template (to get a reward tokenizer that formats conversations
    differently from the policy's).
    """
    settings = _settings(arch, hidden_size, 2, seed, {"kind": "reward", "chat_template": chat_template})

    def build():
        tokenizer = build_tiny_tokenizer()
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        return build_tiny_reward_model(tokenizer, arch=arch, hidden_size=hidden_size, seed=seed), tokenizer

    return save_cached(output_dir, settings, build)


IMAGE_TOKEN = "<image>"
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_vlm(hidden_size: int = 32, image_size: int = 28, patch_size: int = 14, seed: int = 0):
    """A tiny LLaVA (CLIP vision tower + Qwen2 decoder) and its processor, float32, seeded; returns (model, processor).

    The processor is the tiny tokenizer plus an `<image>` token and a ChatML template that renders image parts, and a
    PIL-backed CLIP image processor (no torchvision needed) resizing to `image_size`; each image becomes
    (image_size / patch_size)^2 `<image>` tokens.
    """
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, IMAGE_TOKEN]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",  # drop CLIP's class token ...
        num_additional_image_tokens=1,  # ... which the processor counts here
        chat_template=VLM_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    token_ids = special_token_ids(tokenizer)
    config = LlavaConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            **token_ids,
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        **token_ids,
    )
    model = seeded_model(LlavaForConditionalGeneration, config, seed)
    model.generation_config = GenerationConfig(**token_ids)
    return model, processor


def save_tiny_vlm(output_dir, hidden_size: int = 32, seed: int = 0) -> str:
    """Build and save a tiny LLaVA and its processor (`build_tiny_vlm`) into `output_dir`, unless already there."""
    settings = _settings("llava", hidden_size, 2, seed, {"kind": "vlm"})
    return save_cached(output_dir, settings, lambda: build_tiny_vlm(hidden_size=hidden_size, seed=seed))


def tiny_image_prompt_dataset(n: int = 8, images_per_prompt: int = 1, image_size: int = 28, seed: int = 0):
    """`n` conversational prompts asking about random RGB images (an "image" column, or "images" when several)."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    rng = np.random.default_rng(seed)
    questions = ("What is in the image?", "Describe the picture.", "What colour is it?", "Is the image bright?")
    prompts, images = [], []
    for i in range(n):
        parts = [{"type": "image"} for _ in range(images_per_prompt)]
        prompts.append(
            [{"role": "user", "content": parts + [{"type": "text", "text": questions[i % len(questions)]}]}]
        )
        pixels = rng.integers(0, 256, size=(images_per_prompt, image_size, image_size, 3), dtype=np.uint8)
        images.append([Image.fromarray(p) for p in pixels])
    if images_per_prompt == 1:
        return Dataset.from_dict({"prompt": prompts, "image": [imgs[0] for imgs in images]})
    return Dataset.from_dict({"prompt": prompts, "images": images})
