"""The test that proves the method: train PowerFlowTrainer on an enumerable toy and compare, exactly, with the
fixed point of its objective computed here independently of the trainer.

Toy (trl_powerflow/toys/enumerable.py): vocabulary {<eos>, a, b, q}, prompts "q" and "b a", max_completion_length 3;
every completion ends at the first <eos> or at the length limit (terminal too), so each prompt has 1 + 3 + 9 * 4 = 40
of them and all probabilities are exact. The oracle here is written from the residual of PAPER_NOTES §3 alone (no
trainer or loss code). r(y) = 0 for every y, with the LA-TB residual
    r(y) = log Z'(q) + S_pi(y)/|y| - alpha * (S_base(y)/|y| + psi(y)),      S = sum_t log p(y_t),
gives  log pi*(y) = alpha * S_base(y) + alpha * |y| * psi(y) - lambda * |y|  and  log Z'* = lambda, the root of
sum_y pi*(y) = 1 (bisection). psi sits inside the per-token bracket, so it enters pi* multiplied by |y|: the form
p^alpha * exp(alpha * psi) * exp(-lambda |y|) holds only for a psi that is itself divided by |y| (checked below).
For plain TB (tb_traj) and the exact objectives la_tb_exact and token_balance (a residual whose zero is the same):
log pi* = alpha * (S_base + psi) - log Z, log Z by logsumexp.

Covered, each against that exact oracle: every objective at alpha 2 and 0.5; two prompts with different fixed points
(the head must depend on q), for la_tb and each exact objective; the head-free group estimator, and token_balance
with V(root) from the group (alpha 0.5 and two prompts); sampling at temperature 0.7 (with 30 warm-up steps); reused
generations (num_iterations=2, so w != 1); a shaping term psi from reward_funcs; two processes under torchrun
(gloo); and log Z' tracking the exact residual-minimising value of the current policy along training, with
re-centring on and off, and at policy learning rates 100x below and above the head's. One tracking case is a strict
xfail that documents where re-centring cannot help (PER_PROMPT: it moves one constant shared by all prompts).
`pytest -s` prints the observed numbers ([exact] and [track] lines).

Capacity. At alpha 0.5 this one-layer toy cannot represent the target: exact gradient descent on KL(pi || pi*)
itself (all 40 completions, Adam, 1500 or 5000 steps) stops at a 98.8% reduction, with too much mass on the one-token
completion (0.112 against 0.103), and the 1/|y|^2-weighted residual minimiser of that best policy (the constant of
la_tb_exact and of token_balance's root) is 1.375 against log Z = 1.406. At alpha 2 the same descent reaches 99.9%
on both prompts at once. So at alpha 0.5 the 97% bar is 1.8 points from what any objective can reach here.

Seed and kernel sensitivity, measured on 2026-12-07 and not asserted here (every case runs at seed 0,
`tests/helpers.py`). Another CPU's kernels (AVX-512 on some CI machines) change the float rounding, so sampling can
take another path after a while: the worst KL reduction over the prompts at seeds 1 / 2 / 3 stands in for that.
la_tb on one prompt 99.7% or more; tb_traj and la_tb_exact at alpha 2 99.5% or more; at alpha 0.5 tb_traj 97.8 /
98.4 / 97.7% and la_tb_exact 97.4 / 97.2 / 97.4%; token_balance at alpha 2 99.4% or more; two_prompts 99.3%,
group_estimator 97.1 / 99.2 / 99.2% (seed 1: "a b q" and "b q a" pushed down early, as at T = 0.7 without warm-up),
two_prompts_tb_traj 98.6%, two_prompts_la_tb_exact 97.9 / 98.6 / 97.5% (97.6 / 98.6% at seeds 4 and 5),
two_prompts_token_balance 98.7% or more, two_prompts_token_balance_group 98.5 / 99.0 / 98.7%, temperature_0.7 (with
its warm-up, see LOW_TEMPERATURE) 98.9 / 98.9 / 98.6%, num_iterations_2 98.2 / 99.1 / 99.1%, shaping_psi 99.6% or
more; alpha_0.5_token_balance_group 97.6 / 97.9 / 96.95% with V(root) within 0.03 of log Z (seeds 4-7: 97.4 / 97.2 /
97.5 / 97.1%). That case and the alpha 0.5 ones above sit closest to the bar, as the capacity above says they must:
seed 3's 96.95% is no rare completion lost but too much mass on the one-token completions (the capacity pattern),
and it stays there at 500 steps (96.9%). With `ATEN_CPU_CAPABILITY=default` (scalar kernels instead of AVX2) every
case passes at seed 0.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import toy_run_kwargs
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_powerflow import PowerFlowConfig, PowerFlowTrainer
from trl_powerflow.toys.enumerable import (
    TOY_PROMPT,
    TOY_SECOND_PROMPT,
    TOY_SHAPING_BONUS,
    TOY_TOKENS,
    completion_logprobs,
    enumerate_completions,
    toy_shaping_reward,
)
from trl_powerflow.training.log_z_head import LOG_Z_HEAD_FILE, LogZHead

MAX_LEN = 3
COMPLETIONS = enumerate_completions(MAX_LEN)
LENGTHS = torch.tensor([len(c) for c in COMPLETIONS], dtype=torch.float64)
# psi(y) of `toy_shaping_reward`, computed here from the token ids (the reward function sees decoded text).
SHAPING_PSI = torch.tensor(
    [TOY_SHAPING_BONUS if TOY_TOKENS.index("a") in c else 0.0 for c in COMPLETIONS], dtype=torch.float64
)
ONE_PROMPT = (TOY_PROMPT,)
TWO_PROMPTS = (TOY_PROMPT, TOY_SECOND_PROMPT)
WORKER = Path(__file__).resolve().parent / "exact_oracle_worker.py"
REDUCTION = 0.97  # every training case: the exact KL(pi || pi*) must fall by at least this fraction, on every prompt
LOG_Z_TOLERANCE = 0.05  # |log Z'(q) - lambda_q| at the end (observed <= 0.02, see report())


# --------------------------------------------------------------------------------------------- the exact oracle
def la_tb_fixed_point(base_logp, alpha, psi=None):
    """log pi*(y) = alpha S_base + alpha |y| psi - lambda |y|, lambda the root of sum_y pi*(y) = 1 (bisection)."""
    psi = torch.zeros_like(base_logp) if psi is None else psi
    unnormalised = alpha * base_logp + alpha * LENGTHS * psi
    f = lambda lam: torch.logsumexp(unnormalised - lam * LENGTHS, 0).item()  # noqa: E731  decreasing in lam
    lo, hi = -100.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    lam = (lo + hi) / 2
    return unnormalised - lam * LENGTHS, lam


def tb_traj_fixed_point(base_logp, alpha, psi=None):
    """log pi*(y) = alpha (S_base + psi) - log Z, log Z = log sum_y p^alpha(y) exp(alpha psi(y))."""
    psi = torch.zeros_like(base_logp) if psi is None else psi
    unnormalised = alpha * (base_logp + psi)
    log_z = torch.logsumexp(unnormalised, 0)
    return unnormalised - log_z, log_z.item()


def target_minus_policy(policy_logp, base_logp, alpha, psi=None, objective="la_tb"):
    """g(y) with r(y) = log Z' - g(y). The constant minimising E_{y~pi} r(y)^2 is c*(pi) = E_{y~pi} g(y)."""
    psi = torch.zeros_like(base_logp) if psi is None else psi
    if objective == "la_tb":
        return alpha * (base_logp / LENGTHS + psi) - policy_logp / LENGTHS
    return alpha * (base_logp + psi) - policy_logp


def prompt_ids(prompt):
    return [TOY_TOKENS.index(token) for token in prompt.split()]


@torch.no_grad()
def exact_logp(model, prompt):
    """Exact temperature-1 log pi(y | prompt) of all 40 completions."""
    training = model.training
    model.eval()
    logp = completion_logprobs(model, prompt_ids(prompt), COMPLETIONS)
    model.train(training)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)  # the enumeration covers every completion
    return logp


def kl(logp, target_logp):
    return (logp.exp() * (logp - target_logp)).sum().item()


@torch.no_grad()
def head_log_z(policy, head, prompt, objective="la_tb"):
    """log Z'(prompt) of a head: the head applied to the mean over the prompt's tokens of the backbone's last hidden
    state (after the final norm), the input PAPER_NOTES §4 defines. Read without padding, one prompt at a time."""
    ids = torch.tensor([prompt_ids(prompt)], device=policy.device)
    hidden = policy.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    if objective == "token_balance":  # the value V(root), read on the prompt's last token
        return head(hidden[:, -1]).item()
    return head(hidden.mean(dim=1)).item()


class Oracle:
    """Exact base log-probs of each prompt (from a fresh copy of the starting model) and the fixed point."""

    def __init__(self, model_dir, prompts, alpha, objective="la_tb", psi=None):
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        self.alpha, self.objective, self.psi = alpha, objective, psi
        self.base_logp = {p: exact_logp(base, p) for p in prompts}
        fixed_point = la_tb_fixed_point if objective == "la_tb" else tb_traj_fixed_point
        self.target, self.log_z = {}, {}
        for p in prompts:
            self.target[p], self.log_z[p] = fixed_point(self.base_logp[p], alpha, psi)
            assert self.target[p].exp().sum().item() == pytest.approx(1.0, abs=1e-9)

    def kl(self, model):
        return {p: kl(exact_logp(model, p), target) for p, target in self.target.items()}

    def residual_minimiser(self, model, prompt):
        """(c*(pi), sd_{y~pi} g(y)) of the model's current policy on one prompt, exactly."""
        logp = exact_logp(model, prompt)
        g = target_minus_policy(logp, self.base_logp[prompt], self.alpha, self.psi, self.objective)
        mean = (logp.exp() * g).sum()
        return mean.item(), (logp.exp() * (g - mean) ** 2).sum().sqrt().item()


# ---------------------------------------------------------------------------------------------------- training
def settings(output_dir, **overrides):
    """Training settings: every PowerFlow field and GRPO's `disable_dropout` at their defaults (head lr = policy lr,
    re-centring on, head dropout `log_z_dropout` 0). 64 completions per prompt and step and lr 3e-3: with 16 and 5e-3,
    rare completions of the target were sometimes driven to ~0 early and, never sampled again, left 5-8% of the KL
    (seed-dependent). A step costs about the same at 16 or 64 completions on this toy.

    Seen to fail with the head's dropout back at 0.1 under GRPO's default `disable_dropout=False` (the previous
    default): two_prompts ends with log Z' 0.22 ('q') and 0.28 ('b a') off the exact values (tolerance 0.05) and the
    KL of 'b a' down only 96.8%."""
    values = toy_run_kwargs(output_dir, max_completion_length=MAX_LEN, num_generations=64, max_steps=300)
    values.update(per_device_train_batch_size=64, lr_scheduler_type="linear", logging_steps=10)
    values.update(overrides)
    return values


def make_trainer(model_dir, prompts, config, reward_funcs=None, callbacks=None):
    return PowerFlowTrainer(
        model=model_dir,
        args=PowerFlowConfig(**config),
        reward_funcs=reward_funcs,
        train_dataset=Dataset.from_dict({"prompt": list(prompts) * 64}),
        callbacks=callbacks,
    )


def logged(log_history, name):
    return [entry[name] for entry in log_history if name in entry]


def prompt_probe(batches):
    """A reward function that adds 0 to psi and records the prompts of every generation batch (one row per
    completion), so that a logged window average can be compared with the exact values of the prompts it saw."""

    def prompt_probe(prompts, completions, **kwargs):
        batches.append([p if isinstance(p, str) else str(p) for p in prompts])
        return [0.0] * len(prompts)

    return prompt_probe


def report(label, kl_start, kl_end, log_z=None, log_z_star=None):
    """One line per case (shown with `pytest -s`): the observed numbers behind the assertions."""
    parts = [f"{p!r}: KL {kl_start[p]:.4f} -> {kl_end[p]:.5f} ({1 - kl_end[p] / kl_start[p]:.2%})" for p in kl_start]
    if log_z is not None:
        parts += [f"{p!r}: log Z' {log_z[p]:+.4f} vs exact {log_z_star[p]:+.4f}" for p in log_z]
    print(f"\n[exact] {label}: " + "; ".join(parts))


def assert_converged(label, kl_start, kl_end, log_z, log_z_star, log_z_tolerance=LOG_Z_TOLERANCE):
    report(label, kl_start, kl_end, log_z, log_z_star)
    for p in kl_start:
        assert kl_start[p] > 0.05, f"{label}: the target is too close to the starting model for prompt {p!r}"
        assert kl_end[p] <= (1 - REDUCTION) * kl_start[p], (
            f"{label}, prompt {p!r}: exact KL fell only from {kl_start[p]:.4f} to {kl_end[p]:.4f} "
            f"({1 - kl_end[p] / kl_start[p]:.1%} < {REDUCTION:.0%})"
        )
    for p in log_z:
        assert abs(log_z[p] - log_z_star[p]) < log_z_tolerance, (label, p, log_z, log_z_star)


# ------------------------------------------------------------------------------------- fixed point: one prompt
VALUE_ROOT_LAGS = (
    "token_balance at alpha 0.5 with the head's V(root) (log_z_estimator='head', the default): the policy's KL falls "
    "97.1%, but V(root) ends at +1.21 against log Z = +1.41 (seed 42: +1.17, the trained policy's minimiser +1.28): "
    "V(root) enters only the whole-completion residual, weighted 1/|y|^2 among the suffixes; a 10x head learning "
    "rate did not help (KL 96.4%); at seed 42 a shift of V(root) to that minimiser after each step reached +1.35. "
    "log_z_estimator='group' takes V(root) from the group and passes (alpha_0.5_token_balance_group)."
)


@pytest.mark.parametrize(
    "objective",
    ["la_tb", "tb_traj", "la_tb_exact", "token_balance"],
)
@pytest.mark.parametrize("alpha", [2.0, 0.5])
def test_trained_policy_matches_exact_fixed_point(toy_model_dir, tmp_path, alpha, objective, request):
    """la_tb against its tilted fixed point; tb_traj, la_tb_exact and token_balance against the pure alpha-power
    p^alpha / Z. token_balance reads V(root) on the prompt's last token."""
    if objective == "token_balance" and alpha == 0.5:
        request.applymarker(pytest.mark.xfail(strict=True, reason=VALUE_ROOT_LAGS))
    assert len(COMPLETIONS) == 40
    oracle = Oracle(toy_model_dir, ONE_PROMPT, alpha, objective)
    trainer = make_trainer(toy_model_dir, ONE_PROMPT, settings(tmp_path, alpha=alpha, objective=objective))
    kl_start = oracle.kl(trainer.model)
    trainer.train()
    kl_end = oracle.kl(trainer.model)
    # The head's log Z' on the prompt reaches lambda (la_tb) or log sum p^alpha (tb_traj, la_tb_exact) ...
    log_z = {TOY_PROMPT: head_log_z(trainer.model, trainer.log_z_head, TOY_PROMPT, objective)}
    assert_converged(f"alpha={alpha} {objective}", kl_start, kl_end, log_z, oracle.log_z)
    # ... and so does the value the trainer logs (its own, averaged over the last logging window).
    last_logged = logged(trainer.state.log_history, "powerflow/log_z_mean")[-1]
    assert abs(last_logged - oracle.log_z[TOY_PROMPT]) < LOG_Z_TOLERANCE, (last_logged, oracle.log_z)


# ---------------------------------------------------------------------------------- what users combine
# case: (prompts, config overrides, shaping reward). The two-prompt cases keep 64 completions per prompt and step.
TWO = dict(per_device_train_batch_size=128)
GROUP = dict(log_z_estimator="group")
# At T < 1 the sampler explores less: a completion pushed down in the first steps at the full learning rate is then
# sampled in proportion to about pi^(1/T) and may never come back. Without warm-up, seed 1 ended with 'b a' at 95.7%
# ("a b q" and "b q a" at pi 0.0002 against pi* 0.0065); with 30 warm-up steps, seeds 0-3 reach 98.6-99.5%.
LOW_TEMPERATURE = dict(temperature=0.7, warmup_steps=30)
COMBINATIONS = {
    "two_prompts": (TWO_PROMPTS, TWO, False),
    # the exact objectives, against the pure alpha-power of each prompt (token_balance: V(root) as log Z)
    "two_prompts_tb_traj": (TWO_PROMPTS, dict(TWO, objective="tb_traj"), False),
    "two_prompts_la_tb_exact": (TWO_PROMPTS, dict(TWO, objective="la_tb_exact"), False),
    "two_prompts_token_balance": (TWO_PROMPTS, dict(TWO, objective="token_balance"), False),
    "group_estimator": (TWO_PROMPTS, dict(TWO, log_z_estimator="group"), False),
    # token_balance with V(root) from the group (`GroupRootValue`), where the head's V(root) lags (VALUE_ROOT_LAGS)
    "alpha_0.5_token_balance_group": (ONE_PROMPT, dict(alpha=0.5, objective="token_balance", **GROUP), False),
    "two_prompts_token_balance_group": (TWO_PROMPTS, dict(TWO, objective="token_balance", **GROUP), False),
    "temperature_0.7": (TWO_PROMPTS, dict(TWO, **LOW_TEMPERATURE), False),
    "num_iterations_2": (TWO_PROMPTS, dict(TWO, num_iterations=2), False),
    "shaping_psi": (ONE_PROMPT, {}, True),
}


@pytest.mark.parametrize("case", list(COMBINATIONS))
def test_combinations_match_exact_fixed_point(toy_model_dir, tmp_path, case):
    """Each case at the defaults against its objective's exact fixed point. Seen to fail with la_tb_exact computing
    LA-TB's residual: two_prompts_la_tb_exact's KL to the pure alpha-power falls only 73.5% / 38.0%; with
    `GroupRootValue` taking the group's 1/|y|^2-weighted residual minimiser (token_balance's own weighting) instead of
    the bound mean(alpha S_base - S_pi), alpha_0.5_token_balance_group logs V(root) 0.028 below log Z (inside the
    0.05 tolerance) but 0.022 below the bound log Z - KL (tolerance 0.012; 0.002-0.004 observed); without `head_loss`
    the head's V(root) ends 0.43 below log Z and two_prompts_token_balance_group's KL falls only 95.9% ('q'); with
    the head's V(root) in the loss (regressed on the group's) alpha_0.5_token_balance_group's KL falls 96.9%; with
    the TB loss scored at the sampling temperature (the T = 1 LM head of `PowerFlowTrainer.__init__` not installed)
    temperature_0.7's KL falls only 71.4% / 72.2%."""
    prompts, overrides, shaping = COMBINATIONS[case]
    config = settings(tmp_path, **overrides)
    psi = SHAPING_PSI if shaping else None
    objective = config.get("objective", "la_tb")
    oracle = Oracle(toy_model_dir, prompts, config["alpha"], objective, psi=psi)
    if len(prompts) > 1:  # the fixed points really differ: one constant log Z' (within tolerance) cannot serve both
        gap = 0.1 if objective == "la_tb" else 0.08  # lambda 0.30 apart; log sum p^alpha 0.087 apart
        assert abs(oracle.log_z[prompts[0]] - oracle.log_z[prompts[1]]) > gap, oracle.log_z
    batches = []
    reward_funcs = [toy_shaping_reward] if shaping else None
    if config.get("log_z_estimator") == "group":
        reward_funcs = [prompt_probe(batches)]
    trainer = make_trainer(toy_model_dir, prompts, config, reward_funcs=reward_funcs)
    kl_start = oracle.kl(trainer.model)
    trainer.train()
    kl_end = oracle.kl(trainer.model)

    if config.get("log_z_estimator") == "group":
        # Group estimator (for token_balance: of V(root)): log Z' of a completion is the mean over its group of
        # alpha (S_base/|y| + psi) - S_pi/|y| (token_balance: the sums), lambda (log Z) of the group's prompt at the
        # fixed point. The last logged value averages the rows of the last
        # `logging_steps` generation batches; the probe says which prompts those rows had.
        window = [p for batch in batches[-config["logging_steps"] :] for p in batch]
        assert set(window) <= set(prompts) and len(window) == config["logging_steps"] * len(batches[-1])
        log_z = {"logged window": logged(trainer.state.log_history, "powerflow/log_z_mean")[-1]}
        log_z_star = {"logged window": sum(oracle.log_z[p] for p in window) / len(window)}
        if objective == "token_balance":  # the value head's own V(root), regressed on the group's, per prompt
            log_z.update({p: head_log_z(trainer.model, trainer.log_z_head, p, objective) for p in prompts})
            log_z_star.update(oracle.log_z)
    else:
        log_z = {p: head_log_z(trainer.model, trainer.log_z_head, p, objective) for p in prompts}
        log_z_star = oracle.log_z
    assert_converged(case, kl_start, kl_end, log_z, log_z_star)
    if config.get("log_z_estimator") == "group" and objective == "token_balance":
        # V(root) is the on-policy bound E_pi[alpha S_base - S_pi] = log Z - KL(pi || pi*), not only near log Z
        bound = sum(oracle.log_z[p] - kl_end[p] for p in window) / len(window)
        print(f"[exact] {case}: logged V(root) {log_z['logged window']:+.4f}, bound log Z - KL {bound:+.4f}")
        assert abs(log_z["logged window"] - bound) < 0.012, (log_z, bound)

    if shaping:
        # psi enters pi* multiplied by |y| (see the module docstring): the policy is much closer to that fixed point
        # than to p^alpha exp(alpha psi) exp(-lambda |y|), which would treat psi as a once-per-sequence bonus
        # (observed KL 0.008 vs 0.031).
        other = la_tb_fixed_point(oracle.base_logp[TOY_PROMPT], config["alpha"], SHAPING_PSI / LENGTHS)[0]
        kl_other = kl(exact_logp(trainer.model, TOY_PROMPT), other)
        print(f"[exact] shaping_psi: KL to p^alpha exp(alpha psi) exp(-lambda |y|) instead: {kl_other:.4f}")
        assert kl_other > 3 * kl_end[TOY_PROMPT], (kl_other, kl_end)


@pytest.mark.distributed
def test_two_processes_match_exact_fixed_point(toy_model_dir, tmp_path):
    """The `two_prompts` case under `torchrun --nproc_per_node 2` (gloo on CPU), same global batch (2 x 64): the
    worker saves the final model and head, and the exact check runs here on what it saved."""
    output_dir = tmp_path / "run"
    config = settings(output_dir, per_device_train_batch_size=64, max_steps=300)
    del config["output_dir"]
    spec = {"prompts": list(TWO_PROMPTS), "shaping": False, "config": config}
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(WORKER), toy_model_dir, str(output_dir), json.dumps(spec)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    with open(output_dir / "worker_result.json") as f:
        worker = json.load(f)
    assert worker["num_processes"] == 2

    oracle = Oracle(toy_model_dir, TWO_PROMPTS, config["alpha"])
    kl_start = oracle.kl(AutoModelForCausalLM.from_pretrained(toy_model_dir))
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    head = LogZHead(model.config.hidden_size)
    head.load_state_dict(load_file(output_dir / LOG_Z_HEAD_FILE))
    head.eval()
    kl_end = oracle.kl(model)
    log_z = {p: head_log_z(model, head, p) for p in TWO_PROMPTS}
    for p in TWO_PROMPTS:  # the saved head reproduces the trained one
        assert log_z[p] == pytest.approx(worker["log_z"][p], abs=1e-5)
    assert_converged("torchrun 2 processes, two prompts", kl_start, kl_end, log_z, oracle.log_z)


# ------------------------------------------------------------------ log Z' tracks the current policy's optimum
class ResidualMinimiserTracker(TrainerCallback):
    """After every optimizer step: each prompt's head log Z' and the exact c*(pi_t), sd_{y~pi_t} g(y) of the policy
    just produced (step 0: the starting policy)."""

    def __init__(self, oracle):
        self.oracle = oracle
        self.trainer = None
        self.rows = {p: [] for p in oracle.target}  # (step, log Z', c*, sd)

    def _record(self, step, with_head):
        model = self.trainer.model
        for p, rows in self.rows.items():
            c_star, sd = self.oracle.residual_minimiser(model, p)
            log_z = head_log_z(model, self.trainer.log_z_head, p) if with_head else math.nan
            rows.append((step, log_z, c_star, sd))

    def on_train_begin(self, args, state, control, **kwargs):
        self._record(0, with_head=False)

    def on_step_end(self, args, state, control, **kwargs):
        self._record(state.global_step, with_head=True)


TRACK_STEPS = 30
TRACK_COMPLETIONS = 256
TRACK_SLACK = 0.03


def tracking_errors(tracker, completions_per_step):
    """Per prompt and step t >= 1: (step, error log Z'_t - c*_t, its tolerance, how far beyond the tolerance).

    Tolerance, from what re-centring does: after step t the head's log Z' is the (w-weighted, here w = 1) mean of
    g(y) over the step's n completions, drawn from pi_{t-1} and scored with it, so log Z'_t - c*(pi_{t-1}) has standard
    deviation sd_{t-1} / sqrt(n), known exactly; the same step then moved the policy, which moves c* by
    |c*_t - c*_{t-1}|, also exact. Allowed: 4 standard deviations (a 6e-5 two-sided chance per step for a normal
    deviation), plus that drift, plus TRACK_SLACK for the head's own optimizer step, which lands after the shift
    (a few hundredths of log Z' at head lr 5e-3) and float32 rounding. With one prompt per step n is exact; with
    two, the shift pools both prompts and the tolerance uses the larger sd."""
    out = {}
    for p, rows in tracker.rows.items():
        out[p] = []
        for (_, _, c_prev, _), (step, log_z, c_star, _) in zip(rows, rows[1:]):
            sd = max(r[3] for q_rows in tracker.rows.values() for r in q_rows if r[0] == step - 1)
            tolerance = 4 * sd / math.sqrt(completions_per_step) + abs(c_star - c_prev) + TRACK_SLACK
            error = log_z - c_star
            out[p].append((step, error, tolerance, abs(error) - tolerance))
    return out


def run_tracking(model_dir, output_dir, prompts, **overrides):
    """alpha 4 (the policy travels far: c* rises from about -2.9 to -1.7 in the first ~10 steps), on-policy, 256
    completions per step (standard errors of 0.01-0.08), constant learning rates, tracked after each of TRACK_STEPS
    steps."""
    config = settings(
        output_dir,
        alpha=4.0,
        num_generations=TRACK_COMPLETIONS // len(prompts),
        per_device_train_batch_size=TRACK_COMPLETIONS,
        lr_scheduler_type="constant",
        max_steps=TRACK_STEPS,
        **overrides,
    )
    oracle = Oracle(model_dir, prompts, config["alpha"])
    tracker = ResidualMinimiserTracker(oracle)
    trainer = make_trainer(model_dir, prompts, config, callbacks=[tracker])
    tracker.trainer = trainer
    trainer.train()
    return tracking_errors(tracker, config["per_device_train_batch_size"])


def describe(label, errors):
    for p, rows in errors.items():
        worst = max(rows, key=lambda r: r[3])
        print(
            f"\n[track] {label} {p!r}: max |log Z' - c*| {max(abs(r[1]) for r in rows):.3f}, after step 3 "
            f"{max(abs(r[1]) for r in rows if r[0] > 3):.3f}; worst step {worst[0]}: error {worst[1]:+.3f} vs "
            f"tolerance {worst[2]:.3f}; steps beyond tolerance: {[r[0] for r in rows if r[3] > 0]}"
        )


def test_log_z_tracks_residual_minimiser_of_current_policy(toy_model_dir, tmp_path):
    """Defaults (log_z_learning_rate unset: head lr = policy lr; log_z_recentre default): after every step the
    head's log Z' is the exact residual-minimising constant c*(pi) of the current policy, within the statistical
    tolerance of `tracking_errors`. Contrast, same learning rates, re-centring off: log Z' lags far behind."""
    defaults = run_tracking(
        toy_model_dir, tmp_path / "recentred", ONE_PROMPT, learning_rate=5e-3, log_z_learning_rate=None
    )
    describe("defaults (recentred)", defaults)
    no_recentre = run_tracking(
        toy_model_dir,
        tmp_path / "plain",
        ONE_PROMPT,
        learning_rate=5e-3,
        log_z_learning_rate=None,
        log_z_recentre=False,
    )
    describe("log_z_recentre=False", no_recentre)
    rows, plain = defaults[TOY_PROMPT], no_recentre[TOY_PROMPT]
    assert all(excess <= 0 for *_, excess in rows), [r for r in rows if r[3] > 0]
    # Without re-centring the head lags: beyond its tolerance at several steps, by far more than the recentred head
    # ever deviates, and below c* (c* rises while the policy sharpens) at the steps where it lags.
    beyond = [r for r in plain if r[3] > 0]
    assert len(beyond) >= 5, plain
    assert max(r[3] for r in plain) > 0.5, plain
    assert all(r[1] < 0 for r in plain[:5]), plain
    late = lambda errors: sum(abs(r[1]) for r in errors if 2 <= r[0] <= 15)  # noqa: E731  after the first step
    assert late(plain) > 5 * late(rows), (late(plain), late(rows))


PER_PROMPT = (
    "Re-centring moves one constant for all prompts, set by the step's pooled mean residual, whose prompt mix is "
    "random (2 groups per step: both may be the same prompt); the prompt-dependent part of log Z' is left to the "
    "head's own gradient steps. Per prompt, log Z' misses c* by up to 0.30 ('q') and 0.18 ('b a') after step 3, "
    "beyond tolerance at 9 and 9 of 30 steps (run of 2026-12-07)."
)


@pytest.mark.parametrize(
    "case",
    [
        "head_lr_100x_below_policy",
        "policy_lr_100x_below_head",  # the shift is computed after the optimizer step, with the head's own move
        pytest.param("two_prompts_defaults", marks=pytest.mark.xfail(strict=True, reason=PER_PROMPT)),
    ],
)
def test_log_z_tracking_other_learning_rates(toy_model_dir, tmp_path, case):
    """The tracking claim of `log_z_recentre` (the constant part of log Z' never lags the policy) at other ratios
    of the two learning rates, and per prompt with two prompts. The strict xfails document where it does not hold
    (PER_PROMPT); fixing the trainer turns it into a failure that asks to drop the marker."""
    prompts, overrides = {
        "head_lr_100x_below_policy": (ONE_PROMPT, dict(learning_rate=5e-3, log_z_learning_rate=5e-5)),
        "policy_lr_100x_below_head": (ONE_PROMPT, dict(learning_rate=5e-4, log_z_learning_rate=5e-2)),
        "two_prompts_defaults": (TWO_PROMPTS, dict(learning_rate=5e-3, log_z_learning_rate=None)),
    }[case]
    errors = run_tracking(toy_model_dir, tmp_path, prompts, **overrides)
    describe(case, errors)
    for p, rows in errors.items():
        assert all(excess <= 0 for *_, excess in rows), (p, [r for r in rows if r[3] > 0])
