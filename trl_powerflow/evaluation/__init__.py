"""Evaluation: sample completions (one pass or power sampling), score accuracy and diversity, the paper's table."""

from . import decoding, generation, metrics, paper_benchmarks, paper_table, power_sampling, vllm_sampling
from .decoding import *  # noqa: F403
from .generation import *  # noqa: F403
from .metrics import *  # noqa: F403
from .paper_benchmarks import *  # noqa: F403
from .paper_table import *  # noqa: F403
from .power_sampling import *  # noqa: F403
from .vllm_sampling import *  # noqa: F403

__all__ = [
    *decoding.__all__,
    *generation.__all__,
    *metrics.__all__,
    *paper_benchmarks.__all__,
    *paper_table.__all__,
    *power_sampling.__all__,
    *vllm_sampling.__all__,
]
