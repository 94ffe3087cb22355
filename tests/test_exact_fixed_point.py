"""The test that proves the method: train PowerFlowTrainer on an enumerable toy and compare, exactly, with the
fixed point of its objective computed here independently of the trainer.

Toy: prompt "q", vocabulary {<eos>, a, b, q}, max_completion_length 3; every completion ends at the first <eos> or at
the length limit (terminal too), so there are 1 + 3 + 9 * 4 = 40 of them and all probabilities are exact.
"""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
from trl_powerflow.toy import TOY_TOKENS, completion_logprobs, enumerate_completions

MAX_LEN = 3
PROMPT = [TOY_TOKENS.index("q")]


def la_tb_fixed_point(base_logp, lengths, alpha):
    """pi*(y) = p^alpha(y) exp(-lambda |y|), lambda the root of sum_y p^alpha exp(-lambda |y|) = 1 (bisection)."""
    f = lambda lam: torch.logsumexp(alpha * base_logp - lam * lengths, 0).item()  # noqa: E731  decreasing in lam
    lo, hi = -100.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    lam = (lo + hi) / 2
    return alpha * base_logp - lam * lengths, lam


def tb_traj_fixed_point(base_logp, alpha):
    """pi*(y) = p^alpha(y) / sum_y' p^alpha(y'); log Z = log sum_y p^alpha(y)."""
    log_z = torch.logsumexp(alpha * base_logp, 0)
    return alpha * base_logp - log_z, log_z.item()


def exact_kl(model, completions, target_logp):
    model.eval()
    logp = completion_logprobs(model, PROMPT, completions)
    model.train()
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)  # the enumeration covers every completion
    return (logp.exp() * (logp - target_logp)).sum().item()


@pytest.mark.parametrize("objective", ["la_tb", "tb_traj"])
@pytest.mark.parametrize("alpha", [2.0, 0.5])
def test_trained_policy_matches_exact_fixed_point(toy_model_dir, tmp_path, alpha, objective):
    completions = enumerate_completions(MAX_LEN)
    assert len(completions) == 40
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.float64)
    base_logp = completion_logprobs(AutoModelForCausalLM.from_pretrained(toy_model_dir), PROMPT, completions)
    if objective == "la_tb":
        target_logp, log_z_star = la_tb_fixed_point(base_logp, lengths, alpha)
    else:
        target_logp, log_z_star = tb_traj_fixed_point(base_logp, alpha)
    assert target_logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)

    args = PowerFlowConfig(
        output_dir=str(tmp_path),
        alpha=alpha,
        objective=objective,
        max_completion_length=MAX_LEN,
        num_generations=16,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        log_z_learning_rate=5e-2,
        lr_scheduler_type="linear",
        max_steps=300,
        logging_steps=25,
        disable_dropout=True,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    trainer = PowerFlowTrainer(model=toy_model_dir, args=args, train_dataset=Dataset.from_dict({"prompt": ["q"] * 64}))
    kl_start = exact_kl(trainer.model, completions, target_logp)
    trainer.train()
    kl_end = exact_kl(trainer.model, completions, target_logp)
    assert kl_start > 0.05  # the target is really different from the starting model
    assert kl_end <= 0.1 * kl_start, f"KL fell only from {kl_start:.4f} to {kl_end:.4f}"
    # The head's log Z' on the (single) prompt approaches lambda (la_tb) or log sum p^alpha (tb_traj).
    log_z = [entry["powerflow/log_z_mean"] for entry in trainer.state.log_history if "powerflow/log_z_mean" in entry]
    assert abs(log_z[-1] - log_z_star) < 0.05, (log_z[-1], log_z_star)
