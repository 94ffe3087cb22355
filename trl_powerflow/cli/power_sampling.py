"""`trl-powerflow power-sampling`: power sampling (Karan & Du 2025) against one-pass sampling, in the evaluation
harness or exactly on the toy.

By default: a base model (`--model`) evaluated with one-pass sampling at temperature 1 and 1/alpha and with power
sampling (`trl_powerflow.evaluation.power_sampling`), plus optionally a PowerFlow-trained model (`--powerflow_model`,
one pass), on `--dataset` (default: the embedded tiny arithmetic task): accuracy, diversity and forward passes per
answer. `--toy`: the exact study on the enumerable toy (`trl_powerflow.evaluation.toy_comparison`).
(`python scripts/power_sampling.py` is the same command.)

    trl-powerflow power-sampling --model outputs/base --powerflow_model outputs/pf --dataset eval.jsonl
    trl-powerflow power-sampling --toy --alpha 2
"""

from __future__ import annotations

import argparse
import json
import os


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="Base model directory (power sampling and one-pass).")
    parser.add_argument("--toy", action="store_true", help="Exact study on the enumerable toy instead.")
    parser.add_argument("--chains", type=int, default=3000, help="--toy: chains per setting.")
    parser.add_argument("--powerflow_model", default=None, help="PowerFlow-trained model (one-pass sampling).")
    parser.add_argument("--dataset", default=None, help="Evaluation prompts with answers (default: embedded tiny).")
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--mcmc_steps", type=int, default=4)
    parser.add_argument("--block_size", type=int, default=None)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--max_prompts", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    return parser


def main(argv=None, prog: str | None = None):
    args = make_parser(prog).parse_args(argv)
    from trl_powerflow.evaluation import (
        evaluate_one_pass,
        evaluate_power_sampling,
        format_markdown_table,
        load_model_and_tokenizer,
        toy_comparison,
    )
    from trl_powerflow.evaluation.markdown import md_table
    from trl_powerflow.toys.tiny_models import tiny_prompt_dataset

    if args.toy:
        from trl_powerflow.toys.enumerable import save_toy_model

        model_dir = args.model or save_toy_model(os.path.join("outputs", "toy-model"))
        rows = toy_comparison(model_dir, alpha=args.alpha, chains=args.chains, seed=args.seed)
        print(f"Enumerable toy, alpha {args.alpha:g}: distance to the exact p^alpha and cost per answer")
        table = [
            [r["method"] + ("" if r["exact"] else f" (empirical, {args.chains} chains)"), f"{r['tv_to_p_alpha']:.3f}",
             f"{r['p_mode']:.3f}", f"{r['forward_passes_per_answer']:.2f}"]
            for r in rows
        ]  # fmt: skip
        print("\n".join(md_table(["method", "TV to p^alpha", "P(mode of p^alpha)", "forward passes / answer"], table)))
        if args.output_json:
            os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
            with open(args.output_json, "w") as f:
                json.dump(rows, f, indent=2)
        return rows
    if args.model is None:
        raise ValueError("--model is required (or use --toy).")
    if args.dataset:
        from trl_powerflow.data import load_prompt_dataset

        dataset = load_prompt_dataset(args.dataset, max_samples=args.max_prompts)
    else:
        dataset = tiny_prompt_dataset(n=args.max_prompts, seed=1)
    common = dict(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, seed=args.seed, embedder=None)
    model, tokenizer = load_model_and_tokenizer(args.model, device="cpu")
    results = [
        evaluate_one_pass(model, tokenizer, dataset, name="base, T=1", **common),
        evaluate_one_pass(
            model, tokenizer, dataset, name=f"base, T=1/{args.alpha:g}", temperature=1 / args.alpha, **common
        ),
        evaluate_power_sampling(
            model,
            tokenizer,
            dataset,
            alpha=args.alpha,
            mcmc_steps=args.mcmc_steps,
            block_size=args.block_size,
            name=f"power sampling a={args.alpha:g} M={args.mcmc_steps}",
            **common,
        ),
    ]
    if args.powerflow_model:
        trained, trained_tokenizer = load_model_and_tokenizer(args.powerflow_model, device="cpu")
        results.append(evaluate_one_pass(trained, trained_tokenizer, dataset, name="PowerFlow, T=1", **common))
    print(format_markdown_table(results))
    print()
    passes = [[r["name"], f"{r['metrics']['forward_passes_per_answer']:.1f}"] for r in results]
    print("\n".join(md_table(["method", "forward passes / answer"], passes)))
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results


if __name__ == "__main__":
    main()
