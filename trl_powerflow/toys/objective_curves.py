r"""Exact KL curves of PowerFlow's objectives on the enumerable toy (`toys/enumerable.py`: prompt "q", 40
completions of up to 3 tokens, every probability exact).

`train_objective_on_toy` trains PowerFlowTrainer through its public API and records, before the first step and every
`eval_every` steps, the exact KL(pi_theta || pi*) to the objective's own fixed point and to the pure alpha-power:

  la_tb (and tb_token)                    pi*(y) = p_base(y)^alpha exp(-lambda |y|), sum_y pi*(y) = 1
  tb_traj, la_tb_exact, token_balance     pi*(y) = p_base(y)^alpha / sum_y' p_base(y')^alpha

`toy_target_distance` trains the default (LA-TB) and records, per step, the trainer's logged estimate of its distance
to that target (`powerflow/target_kl`, `powerflow/target_lambda`) next to the exact values.

Used by the experiment's `toy` stage (`experiments/evidence.py`, `experiments/toy_objectives.py`) and by
`benchmarks/convergence.py`.
"""

import os
import time

import torch

from ..losses import EXACT_OBJECTIVES
from .enumerable import (
    TOY_PROMPT,
    TOY_TOKENS,
    completion_lengths,
    completion_logprobs,
    enumerate_completions,
    la_tb_fixed_point,
    la_tb_lambda,
    power_target_logprobs,
    toy_training_args,
)

MAX_LENGTH = 3
PROMPT_IDS = [TOY_TOKENS.index(TOY_PROMPT)]


def _base_logprobs(model_dir: str):
    """The toy's completions, their lengths and exact log p_base of each."""
    from transformers import AutoModelForCausalLM

    completions = enumerate_completions(MAX_LENGTH)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return completions, completion_lengths(completions), completion_logprobs(base, PROMPT_IDS, completions)


def _train(model_dir: str, callback, **config) -> list[dict]:
    """Train PowerFlowTrainer on the prompt "q" with `toy_training_args(**config)`; returns its log history."""
    from datasets import Dataset

    from .. import PowerFlowConfig, PowerFlowTrainer

    trainer = PowerFlowTrainer(
        model=model_dir, args=PowerFlowConfig(**toy_training_args(**config)),
        train_dataset=Dataset.from_dict({"prompt": [TOY_PROMPT] * 64}), callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    return trainer.state.log_history


def objective_fixed_point(base_logp: torch.Tensor, lengths: torch.Tensor, alpha: float, objective: str):
    """log pi* of `objective` over the completions: the normalised alpha-power for the exact objectives,
    p_base^alpha exp(-lambda |y|) otherwise."""
    if objective in EXACT_OBJECTIVES:
        return power_target_logprobs(base_logp, alpha)
    return la_tb_fixed_point(base_logp, lengths, alpha)


def train_objective_on_toy(
    model_dir: str,
    output_dir: str,
    objective: str,
    *,
    estimator: str = "head",
    seed: int = 0,
    alpha: float = 2.0,
    steps: int = 300,
    learning_rate: float = 5e-3,
    log_z_learning_rate: float | None = None,
    group: int = 16,
    eval_every: int = 1,
) -> dict:
    """Train one objective on the toy; return its settings and `curve`: a list of {step, train_s, kl, kl_to_power}
    (train_s: summed step times, the exact evaluation excluded)."""
    from transformers import TrainerCallback

    completions, lengths, base_logp = _base_logprobs(model_dir)
    target = objective_fixed_point(base_logp, lengths, alpha, objective)
    power = power_target_logprobs(base_logp, alpha)
    curve = []

    @torch.no_grad()
    def record(model, step, train_s):
        logp = completion_logprobs(model, PROMPT_IDS, completions)
        p = logp.exp()
        kl, kl_power = (p * (logp - target)).sum().item(), (p * (logp - power)).sum().item()
        curve.append({"step": step, "train_s": train_s, "kl": kl, "kl_to_power": kl_power})

    class ExactKL(TrainerCallback):
        train_s, t0 = 0.0, 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            record(model, 0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.train_s += time.perf_counter() - self.t0
            if state.global_step % eval_every == 0 or state.global_step == args.max_steps:
                record(model, state.global_step, self.train_s)

    _train(
        model_dir, ExactKL(), output_dir=os.path.join(output_dir, f"{objective}-{estimator}-s{seed}"), group=group,
        steps=steps, seed=seed, alpha=alpha, objective=objective, log_z_estimator=estimator,
        learning_rate=learning_rate, log_z_learning_rate=log_z_learning_rate if estimator == "head" else None,
        lr_scheduler_type="constant",
    )  # fmt: skip
    return {"objective": objective, "estimator": estimator, "seed": seed, "alpha": alpha, "curve": curve}


def toy_target_distance(
    model_dir: str,
    output_dir: str,
    *,
    alpha: float = 2.0,
    group: int = 32,
    steps: int = 48,
    learning_rate: float = 3e-3,
    log_z_learning_rate: float = 5e-2,
    seed: int = 0,
) -> dict:
    """Train PowerFlow (LA-TB) on the toy (the setting of tests/test_target_distance_live.py) and return, per step,
    the exact KL(pi_theta || pi*) of the policy that sampled the step (read before its update), the exact lambda of
    pi* = p_base^alpha exp(-lambda |y|) and the trainer's logged estimates `powerflow/target_kl` and
    `powerflow/target_lambda`."""
    from transformers import TrainerCallback

    completions, lengths, base_logp = _base_logprobs(model_dir)
    target = la_tb_fixed_point(base_logp, lengths, alpha)
    exact_kl = []

    class ExactKL(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            logp = completion_logprobs(model, PROMPT_IDS, completions)
            exact_kl.append((logp.exp() * (logp - target)).sum().item())

    history = _train(
        model_dir, ExactKL(), output_dir=output_dir, group=group, steps=steps, seed=seed, alpha=alpha,
        learning_rate=learning_rate, log_z_learning_rate=log_z_learning_rate, logging_steps=1,
    )  # fmt: skip
    logged = [h for h in history if "powerflow/target_kl" in h]
    return {
        "alpha": alpha,
        "group": group,
        "exact_lambda": float(la_tb_lambda(base_logp, lengths, alpha)),
        "steps": [
            {
                "step": h["step"],
                "exact_kl": kl,
                "estimated_kl": h["powerflow/target_kl"],
                "estimated_lambda": h["powerflow/target_lambda"],
            }
            for h, kl in zip(logged, exact_kl)
        ],
    }
