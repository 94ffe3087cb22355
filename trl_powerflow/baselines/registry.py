r"""The registry of the baseline rewards: names -> TRL reward functions, and building them from names.

Every reward follows TRL's calling convention::

    func(prompts, completions, completion_ids=..., **kwargs) -> list[float | None]

`completions` are strings, or for conversational prompts lists of messages (``[{"role": "assistant", "content":
...}]``); dataset columns such as ``answer`` arrive as keyword lists aligned with `completions`.

Rewards provided (see each docstring for the formula):

- ``accuracy`` (`accuracy_reward`): supervised verifier reward, needs an ``answer`` column (supervised GRPO).
- ``boxed_format`` (`boxed_format_reward`): the paper's format shaping psi (0 with a ``\boxed{}`` answer, else -0.5).
- ``majority_vote`` (`majority_vote_reward`): TTRL, agreement with the group's majority answer.
- ``semantic_entropy`` (`semantic_entropy_reward`): EMPO, probability of the completion's answer cluster.
- ``self_certainty`` (`SelfCertaintyReward`): Intuitor, mean KL(Uniform || pi(.|prefix)) over completion tokens.
- ``entropy_minimisation`` (`EntropyMinimisationReward`): RENT / EM-RL, minus the mean token entropy.

The group rewards (TTRL, EMPO) and the model-based ones (Intuitor, entropy minimisation, which need
`set_reward_model` after the trainer is built) are described in `trl_powerflow.baselines.label_free`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from .format import boxed_format_reward
from .label_free import EntropyMinimisationReward, SelfCertaintyReward, majority_vote_reward, semantic_entropy_reward
from .supervised import accuracy_reward

__all__ = ["REWARD_FUNCS", "get_reward_funcs"]

REWARD_FUNCS: dict[str, Callable] = {
    "accuracy": accuracy_reward,
    "boxed_format": boxed_format_reward,
    "majority_vote": majority_vote_reward,
    "semantic_entropy": semantic_entropy_reward,
    "self_certainty": SelfCertaintyReward,
    "entropy_minimisation": EntropyMinimisationReward,
}


def get_reward_funcs(names: Sequence[str] | str, tokenizer=None) -> list[Callable]:
    """Build reward functions from registry names (`REWARD_FUNCS`) or ``"package.module:attribute"`` import strings.

    Classes (the model-based rewards, or an imported class) are instantiated with `tokenizer`, which is then
    required; their ``.model`` must be set after the trainer is built (`set_reward_model`). Unknown names raise a
    ValueError listing the allowed names.
    """
    if isinstance(names, str):
        names = [names]
    funcs = []
    for name in names:
        if name in REWARD_FUNCS:
            func = REWARD_FUNCS[name]
        elif ":" in name:
            func = _import_object(name)
        else:
            raise ValueError(
                f"Unknown reward {name!r}. Allowed names: {sorted(REWARD_FUNCS)}, or an import string "
                "'package.module:function'."
            )
        if isinstance(func, type):
            if tokenizer is None:
                raise ValueError(f"Reward {name!r} is built from the tokenizer: pass `tokenizer=`.")
            func = func(tokenizer)
        if not callable(func):
            raise ValueError(f"Reward {name!r} resolved to {func!r}, which is not callable.")
        funcs.append(func)
    return funcs


def _import_object(spec: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"Import string {spec!r} must look like 'package.module:function'.")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Cannot import module {module_name!r} for reward {spec!r}: {error}") from error
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as error:
            raise ValueError(f"Module {module_name!r} has no attribute {attribute!r} (reward {spec!r}).") from error
    return obj
