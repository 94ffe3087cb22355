"""`PowerFlowConfig`: `trl.GRPOConfig` plus the fields of the PowerFlow objective."""

from dataclasses import dataclass, field

from trl import GRPOConfig

from .losses import OBJECTIVES
from .training.config_checks import LOG_Z_ESTIMATORS, WEIGHT_LEVELS, validate_powerflow
from .training.divergence import ACTIONS as DIVERGENCE_ACTIONS
from .training.launch_env import default_bf16_off_without_gpu, join_cpu_process_group


@dataclass
class PowerFlowConfig(GRPOConfig):
    r"""
    Configuration for [`PowerFlowTrainer`]: every [`~trl.GRPOConfig`] option plus the PowerFlow objective.

    The policy is trained towards `p_base(y|q)^alpha` with the length-aware trajectory-balance residual
    `r(y) = log Z'(q) + (1/|y|) sum_t log pi(y_t) - alpha * [(1/|y|) sum_t log p_base(y_t) + psi(y)]` and the loss
    `w(y) * r(y)^2`. Each GRPO option keeps its meaning or is rejected with the reason
    (`training/grpo_options.py`).

    Parameters:
        > New parameters

        alpha (`float`, *optional*, defaults to `4.0`):
            Power of the target `p_base^alpha`: > 1 sharpens, < 1 flattens.
        objective (`str`, *optional*, defaults to `"la_tb"`):
            `"la_tb"` (paper Eq. 10), `"tb_traj"` (Eq. 5-6), `"tb_token"` (ablation), `"la_tb_exact"` (the TB
            residual divided by |y|: LA-TB's per-token scale, the exact fixed point `p_base^alpha / Z`) or
            `"token_balance"` (soft-Bellman balance of every prefix with a learned value V(s): the same exact fixed
            point, credit per token).
        log_z_estimator (`str`, *optional*, defaults to `"head"`):
            `"head"` (learned MLP on the prompt's hidden states) or `"group"` (head-free group estimate; for
            `"token_balance"`, V(root) from the group, the value head for the other prefixes).
        log_z_learning_rate (`float`, *optional*):
            Learning rate of the head; `None` uses `learning_rate`.
        log_z_recentre (`bool`, *optional*, defaults to `True`):
            After every optimizer step, shift log Z' to the step's loss minimiser over its constant part (with the
            step's policy log-probs: the policy's own move in the step is not re-scored).
        log_z_detach_features (`bool`, *optional*, defaults to `False`):
            Train only the head with its loss (no gradient into the language model through its features).
        log_z_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout inside the head (independent of `disable_dropout`).
        log_z_init (`float`, *optional*):
            Initial log Z'; `None` sets it so that the first batch's mean residual is 0.
        tb_weight_level (`str`, *optional*, defaults to `"sequence"`):
            Importance weight of reused generations: `"sequence"` or `"sequence_mean"` (per-token geometric mean).

        > Reinterpreted GRPO parameters

        epsilon, epsilon_high (`float`):
            Clip range of the TB weight `w = clip(pi/pi_old, 1 - epsilon, 1 + epsilon_high)` (detached).
        beta (`float`, *optional*, defaults to `0.0`):
            Adds GRPO's own k3 KL term towards the base model (same value and gradient as GRPOTrainer, at any
            sampling temperature: log-probs of logits / T).
        divergence_action (`str`, *optional*, defaults to `"warn"`):
            What a sustained rise of the live distance to the target does: `"warn"`, `"stop"`, `"restore"`, `"off"`.
        kl_at_temperature_one (`bool`, *optional*, defaults to `False`):
            Compute that KL term from temperature-1 log-probs instead (differs from GRPO when temperature != 1).
        reward_funcs / reward_weights:
            Optional; their weighted sum is the shaping term `psi(y)` inside the target.
        temperature, top_k, top_p, min_p:
            Sampling only: the loss always uses temperature-1 log-probs (support-cutting options are warned).
        vllm_importance_sampling_correction (`bool`, *optional*, defaults to `False`):
            Not used (TB needs no sampler correction); `True` is rejected.
    """

    alpha: float = field(
        default=4.0,
        metadata={
            "help": "Power of the target p_base(y|q)^alpha. alpha > 1 sharpens (the paper uses 4 for base models, "
            "2 for instruct models), alpha < 1 flattens (0.5 for creative writing). Must be > 0."
        },
    )
    objective: str = field(
        default="la_tb",
        metadata={
            "help": "Loss: 'la_tb' (length-aware TB, paper Eq. 10, per-token log-partition), 'tb_traj' (plain "
            "trajectory balance on sequence log-probs, Eq. 5-6), 'tb_token' (target length-averaged, policy "
            "summed; ablation) or 'la_tb_exact' (the TB residual divided by |y|: LA-TB's per-token gradient scale "
            "with TB's exact fixed point p_base^alpha / Z, no length tilt; log Z is then sequence-level) or "
            "'token_balance' (token-level soft-Bellman balance: the head becomes a value V(s) read at every "
            "completion prefix, and each sub-trajectory from a prefix to the end is balanced, divided by its "
            "length; same exact fixed point, credit per token; with log_z_estimator='group' V(root) is the group's "
            "on-policy bound mean(alpha S_base - S_pi)).",
            "choices": list(OBJECTIVES),
        },
    )
    log_z_estimator: str = field(
        default="head",
        metadata={
            "help": "How log Z'(q) is estimated: 'head' (a learned MLP on the mean prompt hidden state of the "
            "policy) or 'group' (no parameters: the residual-minimising constant over the num_generations "
            "completions of each prompt, computed at generation time; for 'token_balance' it gives V(root), the value "
            "head the other prefixes).",
            "choices": list(LOG_Z_ESTIMATORS),
        },
    )
    log_z_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the head (token_balance: the value head). None uses `learning_rate`."},
    )
    log_z_recentre: bool = field(
        default=True,
        metadata={
            "help": "After every optimizer step, shift the head's log Z' to the minimiser, over its constant part, "
            "of the step's loss under the updated head with the step's policy log-probs (the policy's own move is "
            "not re-scored). It shortens the path to the fixed point, which no learning rate changes. Only 'head'; "
            "not used by 'token_balance'."
        },
    )
    log_z_detach_features: bool = field(
        default=False,
        metadata={
            "help": "Detach the prompt features fed to the log-partition head, so its loss trains only the head "
            "and sends no gradient into the language model. Only with 'head'."
        },
    )
    log_z_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout inside the log-partition head, whatever `disable_dropout` says of the model. 0 by "
            "default: dropout before the head's nonlinear layers makes its training-time output differ from its "
            "value (on the two-prompt toy log Z' ended up to 0.28 off its exact per-prompt value with 0.1)."
        },
    )
    log_z_init: float | None = field(
        default=None,
        metadata={
            "help": "Initial log Z'(q) of the head. None: set it from the first training batch so that the mean TB "
            "residual starts at 0 (otherwise early steps push every log-prob the same way)."
        },
    )
    tb_weight_level: str = field(
        default="sequence",
        metadata={
            "help": "Importance weight w for reused generations (num_iterations > 1 or steps_per_generation > "
            "gradient_accumulation_steps): 'sequence' = clip(prod_t pi/pi_old) as Eq. 10 reads, 'sequence_mean' = "
            "clip(exp(mean_t log pi/pi_old)), the per-token geometric mean (GSPO-style, less extreme for long "
            "completions). Clipped to [1 - epsilon, 1 + epsilon_high]; w = 1 when training is on-policy.",
            "choices": list(WEIGHT_LEVELS),
        },
    )
    divergence_action: str = field(
        default="warn",
        metadata={
            "help": "On a sustained rise of the live distance to the target (training/divergence.py): 'warn', "
            "'stop', 'restore' (the last checkpoint at or before the best step, then stop) or 'off'.",
            "choices": list(DIVERGENCE_ACTIONS),
        },
    )
    kl_at_temperature_one: bool = field(
        default=False,
        metadata={
            "help": "With beta > 0 and temperature != 1: compute the k3 KL term from temperature-1 log-probs (the KL "
            "between the policy's and the base's own distributions, the scale of the TB target) instead of GRPO's "
            "log-probs at the sampling temperature. Default False: beta means what it means in GRPOTrainer."
        },
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={
            "help": "Not used by PowerFlow (TB needs no correction for the sampler), so it defaults to False and "
            "True is rejected."
        },
    )

    def __post_init__(self):
        validate_powerflow(self)
        # `accelerate launch` of a user's script without a GPU: one gloo group, bf16 off (as the CLI does).
        if join_cpu_process_group() and self.ddp_backend is None:
            self.ddp_backend = "gloo"
        default_bf16_off_without_gpu(self)
        try:
            super().__post_init__()
        except ValueError as error:
            # GRPO refuses one generation per prompt (no group, no advantage). PowerFlow has no advantages: with the
            # learned head every completion has its own residual, so a group of one is a valid batch. GRPOConfig's
            # checks after that one only concern vLLM importance sampling, which PowerFlow rejects above.
            if not (self.num_generations == 1 and "at least 2 generations" in str(error)):
                raise
