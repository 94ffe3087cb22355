r"""An enumerable toy: a tiny causal LM over the vocabulary {<eos>, a, b, q} whose completions can all be listed.

With `max_completion_length = L`, the completions of the prompt "q" (or of any other prompt) are every token
string that ends at the first <eos> or at length L (a completion that hits the limit without <eos> is terminal too).
Their exact probabilities under any model are products of next-token probabilities, so distributions can be compared
exactly: `completion_logprobs` gives log p_base(y) of every completion, `power_target_logprobs` the target
p_base^alpha normalised over them, and `la_tb_fixed_point` the fixed point that LA-TB trains towards.
"""

import itertools

import torch

from .model_cache import save_cached, seeded_model

__all__ = [
    "TOY_PROMPT",
    "TOY_SECOND_PROMPT",
    "TOY_SHAPING_BONUS",
    "TOY_TOKENS",
    "build_toy_tokenizer",
    "completion_lengths",
    "completion_logprobs",
    "enumerate_completions",
    "la_tb_fixed_point",
    "la_tb_lambda",
    "power_target_logprobs",
    "save_toy_model",
    "toy_shaping_reward",
    "toy_training_args",
]

TOY_TOKENS = ("<eos>", "a", "b", "q")
TOY_PROMPT = "q"
# A second prompt, for checks where log Z'(q) must depend on the prompt. With the default toy model (seed 0) its LA-TB
# fixed point differs from that of "q": lambda = -0.89 vs -0.72 at alpha = 2 (0.06 vs 0.25 with the shaping reward
# below), its target is not peaked (largest pi* 0.49) and KL(p_base || pi*) is 0.40 (0.56 for "q"). Two tokens on
# purpose: a one-token prompt t shares its contexts with completions that start with t (the toy cannot tell "t" from
# "t t"; attention over identical tokens gives identical states), and "b" alone has a fixed point with 0.98 on the
# empty answer. The completions are the same 40 strings.
TOY_SECOND_PROMPT = "b a"
TOY_SHAPING_BONUS = 0.5


def build_toy_tokenizer():
    """Word-level tokenizer over TOY_TOKENS; <eos> is also the pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(TOY_TOKENS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>", padding_side="left", truncation_side="left"
    )


def save_toy_model(
    output_dir: str, seed: int = 0, hidden_size: int = 32, initializer_range: float = 0.3, num_hidden_layers: int = 1
) -> str:
    """Build the toy Qwen2 model (1 layer by default; a peaked random init makes p_base far from uniform) and its
    tokenizer."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    settings = {
        "kind": "toy",
        "seed": seed,
        "hidden_size": hidden_size,
        "initializer_range": initializer_range,
        "num_hidden_layers": num_hidden_layers,
    }

    def build():
        tokenizer = build_toy_tokenizer()
        config = Qwen2Config(
            vocab_size=len(TOY_TOKENS),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=16,
            initializer_range=initializer_range,
            tie_word_embeddings=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        )
        model = seeded_model(Qwen2ForCausalLM, config, seed)
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
        )
        return model, tokenizer

    return save_cached(output_dir, settings, build)


def enumerate_completions(max_length: int, vocab_size: int = len(TOY_TOKENS), eos_id: int = 0) -> list[list[int]]:
    """Every terminal completion: k < max_length - 1 non-EOS tokens then EOS, or max_length - 1 non-EOS tokens then
    any token."""
    others = [t for t in range(vocab_size) if t != eos_id]
    completions = []
    for length in range(1, max_length):
        completions += [[*prefix, eos_id] for prefix in itertools.product(others, repeat=length - 1)]
    last = list(range(vocab_size))  # at the length limit every token ends the completion
    completions += [[*prefix, t] for prefix in itertools.product(others, repeat=max_length - 1) for t in last]
    return sorted(completions, key=lambda c: (len(c), c))


def toy_shaping_reward(completions, **kwargs):
    """A shaping term psi(y) for the toy: TOY_SHAPING_BONUS for completions containing the token "a", else 0 (a
    `reward_funcs` entry). Completions are decoded text, with or without spaces between tokens ("aab" from GRPO's
    decoding); "a" is the only token with the letter a, so a substring test finds the token."""
    return [TOY_SHAPING_BONUS if "a" in str(completion) else 0.0 for completion in completions]


@torch.no_grad()
def completion_logprobs(model, prompt_ids: list[int], completions: list[list[int]]) -> torch.Tensor:
    """Exact temperature-1 log p(y | prompt) of each completion, shape (N,), float64 (read in eval mode; the model's
    train/eval mode is restored)."""
    training = model.training
    model.eval()
    try:
        return _completion_logprobs(model, prompt_ids, completions)
    finally:
        model.train(training)


def _completion_logprobs(model, prompt_ids: list[int], completions: list[list[int]]) -> torch.Tensor:
    max_len = max(len(c) for c in completions)
    pad = 0
    ids = torch.tensor([prompt_ids + c + [pad] * (max_len - len(c)) for c in completions])
    mask = torch.tensor([[1] * (len(prompt_ids) + len(c)) + [0] * (max_len - len(c)) for c in completions])
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.double()
    logps = torch.log_softmax(logits[:, len(prompt_ids) - 1 : -1], dim=-1)
    targets = ids[:, len(prompt_ids) :].to(logps.device)
    token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    completion_mask = mask[:, len(prompt_ids) :].to(logps.device).double()
    return (token_logps * completion_mask).sum(-1).cpu()


# ----------------------------------------------------------------------------------------------------------------
# Exact targets over the enumerated completions
# ----------------------------------------------------------------------------------------------------------------


def toy_training_args(output_dir: str, *, group: int, steps: int, seed: int, **overrides) -> dict:
    """PowerFlowConfig arguments of a run on the toy: completions of up to 3 tokens, one group of `group` per step,
    `steps` steps on the CPU, no dropout, checkpointing, logging or saving unless `overrides` say otherwise."""
    args = dict(
        output_dir=output_dir, max_completion_length=3, num_generations=group, per_device_train_batch_size=group,
        max_steps=steps, logging_steps=steps + 1000, disable_dropout=True, gradient_checkpointing=False, bf16=False,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=seed,
    )  # fmt: skip
    return {**args, **overrides}


def completion_lengths(completions: list[list[int]]) -> torch.Tensor:
    """|y| of each completion (EOS included), shape (N,), float64."""
    return torch.tensor([len(c) for c in completions], dtype=torch.float64)


def power_target_logprobs(base_logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """log pi(y) = alpha log p(y) - log sum_y' p(y')^alpha: the alpha-power target normalised over the completions
    (also the fixed point of TB-traj without shaping)."""
    return alpha * base_logp - torch.logsumexp(alpha * base_logp, 0)


def la_tb_lambda(base_logp: torch.Tensor, lengths: torch.Tensor, alpha: float) -> float:
    """lambda of the LA-TB fixed point: the root of sum_y p(y)^alpha exp(-lambda |y|) = 1 (the sum decreases in
    lambda), by 200 bisection steps on [-100, 100]."""
    lo, hi = -100.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if torch.logsumexp(alpha * base_logp - mid * lengths, 0).item() > 0 else (lo, mid)
    return (lo + hi) / 2


def la_tb_fixed_point(base_logp: torch.Tensor, lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """log pi*(y) = alpha log p(y) - lambda |y|, lambda from `la_tb_lambda` (normalised by the choice of lambda): the
    fixed point of the LA-TB objective without shaping, over the completions of `base_logp` / `lengths`."""
    return alpha * base_logp - la_tb_lambda(base_logp, lengths, alpha) * lengths
