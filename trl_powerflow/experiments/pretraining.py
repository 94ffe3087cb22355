r"""Pretraining of the tiny base models of the small-scale experiment and of the digit-chain demo, offline and
deterministically (`trl-powerflow pretrain-base`; the demo's shipped base is `--task reasoning --steps 1500`).

`pretrain_base(args)` with `args.task == "reasoning"` trains a tiny Qwen2 (the package's offline tokenizer) on noisy
worked solutions of the digit-chain task of `trl_powerflow.experiments.synthetic_tasks` (each step wrong with
probability 0.2, a quarter of the solutions are bare guesses), so that the right answer is the model's mode but far
from certain. It writes:

    <output_dir>/base/          the pretrained model + tokenizer (loadable with from_pretrained)
    <output_dir>/train.jsonl    RL training prompts with reference answers ("prompt", "answer")
    <output_dir>/eval.jsonl     held-out evaluation prompts (never seen in pretraining or RL)
    <output_dir>/pretrain.json  settings, losses, time, and a sampled evaluation of the model(s)

`"creative"` trains the same architecture on diverse rhyming couplets (20% flawed), saves it as `base/`, then
fine-tunes it further on an over-sharpened, always-valid corpus and saves that as `aligned/`: a model that has lost
the diversity its base had. Causal-LM loss on the completion tokens only; prompts go through the chat template exactly
as the trainers format them. Everything is seeded: the same settings rebuild the same models.
"""

from __future__ import annotations

import json
import math
import os
import random
import time

TASKS = ("reasoning", "creative")


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


class Encoder:
    """Token ids of (prompt, completion) pairs exactly as the trainers see them: the prompt through the chat template
    with the generation prompt, the completion tokenized alone and closed with EOS."""

    def __init__(self, tokenizer):
        from trl_powerflow.data import prompt_token_ids

        self.tokenizer = tokenizer
        self._prompt_token_ids = prompt_token_ids
        self._cache: dict[str, list[int]] = {}

    def prompt(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._prompt_token_ids(self.tokenizer, [{"role": "user", "content": text}])
            if len(self._cache) < 100_000:
                self._cache[text] = ids
        return ids

    def pair(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        completion_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        return self.prompt(prompt), list(completion_ids) + [self.tokenizer.eos_token_id]


def reasoning_sampler(seed: int, exclude: set[str]):
    from trl_powerflow.experiments.synthetic_tasks import chain_prompt, sample_chain_problem, sample_chain_solution

    rng = random.Random(seed)

    def sample() -> tuple[str, str]:
        while True:
            start, ops = sample_chain_problem(rng)
            prompt = chain_prompt(start, ops)
            if prompt not in exclude:
                return prompt, sample_chain_solution(start, ops, rng)

    return sample


def creative_sampler(seed: int, aligned: bool):
    from trl_powerflow.experiments.synthetic_tasks import (
        NOUNS,
        POEM_PROMPT_TEMPLATES,
        poem_prompt,
        sample_aligned_poem,
        sample_base_poem,
    )

    rng = random.Random(seed)

    def sample() -> tuple[str, str]:
        topic = rng.choice(NOUNS)
        prompt = poem_prompt(topic, rng.randrange(len(POEM_PROMPT_TEMPLATES)))
        poem = sample_aligned_poem(rng, topic) if aligned else sample_base_poem(rng, topic)
        return prompt, poem

    return sample


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def make_batch(pairs, pad_id):
    import torch

    width = max(len(p) + len(c) for p, c in pairs)
    input_ids, labels, attention = [], [], []
    for prompt, completion in pairs:
        ids = prompt + completion
        pad = width - len(ids)
        input_ids.append(ids + [pad_id] * pad)
        labels.append([-100] * len(prompt) + completion + [-100] * pad)
        attention.append([1] * len(ids) + [0] * pad)
    return torch.tensor(input_ids), torch.tensor(labels), torch.tensor(attention)


def train(model, encoder, sample, steps, batch_size, learning_rate, seed, log_every=100, label=""):
    """AdamW, linear warm-up over 5% of the steps then cosine decay to 10%; loss on completion tokens only."""
    import torch

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    pad_id = encoder.tokenizer.pad_token_id
    model.train()
    losses, window, start = [], [], time.time()
    for step in range(steps):
        input_ids, labels, attention = make_batch([encoder.pair(*sample()) for _ in range(batch_size)], pad_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        window.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = sum(window) / len(window)
            losses.append({"step": step + 1, "loss": mean})
            print(
                f"[pretrain{label}] step {step + 1}/{steps} loss {mean:.4f} ({time.time() - start:.0f}s)", flush=True
            )
            window = []
    model.eval()
    return losses, time.time() - start


def save(model, tokenizer, path):
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_jsonl(rows, path):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def sampled_check(path, rows, task, num_samples, seed):
    """Sample the saved model as the comparison harness does (T=1) and return the metrics and task metrics."""
    from trl_powerflow.evaluation import evaluate_model, load_model_and_tokenizer
    from trl_powerflow.experiments.synthetic_tasks import chain_metrics, poem_metrics

    model, tokenizer = load_model_and_tokenizer(path, device="cpu")
    result = evaluate_model(
        model,
        tokenizer,
        rows,
        num_samples=num_samples,
        max_new_tokens=48,
        seed=seed,
        batch_size=16,
        embedder=None,
        return_completions=True,
    )
    extra = (chain_metrics if task == "reasoning" else poem_metrics)(rows, result.pop("completions"))
    return {**result["metrics"], **extra}, result["samples"]


def is_complete(output_dir, task):
    names = ["base"] + (["aligned"] if task == "creative" else [])
    files = [os.path.join(output_dir, n, "model.safetensors") for n in names]
    files += [os.path.join(output_dir, f) for f in ("train.jsonl", "eval.jsonl", "pretrain.json")]
    return all(os.path.isfile(f) for f in files)


def pretrain_base(args) -> str:
    """Pretrain the base model(s) of `args.task` (the options of `trl-powerflow pretrain-base`, see
    `trl_powerflow.cli.pretrain_base`) and write them, the prompt sets and pretrain.json to `args.output_dir`;
    a complete output directory is reused unless `args.force`. Returns the output directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if is_complete(args.output_dir, args.task) and not args.force:
        print(f"[pretrain] {args.output_dir} is complete; pass --force to retrain.")
        return args.output_dir

    from trl_powerflow.experiments.synthetic_tasks import chain_rows, creative_rows
    from trl_powerflow.toys.tiny_models import build_tiny_model, build_tiny_tokenizer

    started = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(
        tokenizer,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads,
        seed=args.seed,
        max_position_embeddings=256,
    )
    encoder = Encoder(tokenizer)
    record = {"task": args.task, "settings": vars(args), "parameters": sum(p.numel() for p in model.parameters())}

    if args.task == "reasoning":
        steps = record["steps"] = args.steps or 1000
        # Disjoint prompt sets: evaluation (seed + 1000), RL training (seed + 2000); pretraining never sees either.
        eval_rows = chain_rows(args.num_eval_prompts, seed=args.seed + 1000)
        train_rows = [
            r
            for r in chain_rows(args.num_train_prompts + args.num_eval_prompts, seed=args.seed + 2000)
            if r["prompt"] not in [e["prompt"] for e in eval_rows]
        ][: args.num_train_prompts]
        exclude = {r["prompt"][0]["content"] for r in eval_rows + train_rows}
        sample = reasoning_sampler(args.seed, exclude)
        record["losses"], record["train_seconds"] = train(
            model, encoder, sample, steps, args.batch_size, args.learning_rate, args.seed
        )
        save(model, tokenizer, os.path.join(args.output_dir, "base"))
        models = {"base": os.path.join(args.output_dir, "base")}
    else:
        steps = record["steps"] = args.steps or 500
        # Prompts: every topic in every phrasing for training, one phrasing per topic for evaluation (label-free task:
        # there is no answer to leak; the evaluation measures quality and diversity of the samples).
        train_rows = creative_rows(templates=(0, 1, 2))
        eval_rows = creative_rows(templates=(0,))
        record["losses"], record["train_seconds"] = train(
            model,
            encoder,
            creative_sampler(args.seed, aligned=False),
            steps,
            args.batch_size,
            args.learning_rate,
            args.seed,
            label=" base",
        )
        save(model, tokenizer, os.path.join(args.output_dir, "base"))
        record["aligned_losses"], record["aligned_seconds"] = train(
            model,
            encoder,
            creative_sampler(args.seed + 1, aligned=True),
            args.aligned_steps,
            args.batch_size,
            args.aligned_learning_rate,
            args.seed + 1,
            log_every=50,
            label=" aligned",
        )
        save(model, tokenizer, os.path.join(args.output_dir, "aligned"))
        models = {"base": os.path.join(args.output_dir, "base"), "aligned": os.path.join(args.output_dir, "aligned")}

    write_jsonl(train_rows, os.path.join(args.output_dir, "train.jsonl"))
    write_jsonl(eval_rows, os.path.join(args.output_dir, "eval.jsonl"))
    if not args.skip_eval:
        record["check"] = {}
        for name, path in models.items():
            metrics, samples = sampled_check(path, eval_rows, args.task, args.eval_samples, args.seed)
            record["check"][name] = {"metrics": metrics, "samples": samples}
            shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
            print(f"[pretrain] {name}: {shown}", flush=True)
    record["total_seconds"] = time.time() - started
    with open(os.path.join(args.output_dir, "pretrain.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"[pretrain] wrote {args.output_dir} in {record['total_seconds']:.0f}s")
    return args.output_dir
