r"""Statistics over seeds of the small-scale experiment (used by its report, `evidence_report.py`):

- per method and budget, the mean over seeds with a 95% t-interval, mean +- t_{0.975, n-1} sd / sqrt(n) (the seed
  changes the RL run and the evaluation sampling, so the interval holds both sources of noise; the base model is
  fixed and evaluated with every seed's sampling);
- the share of supervised GRPO's gain that PowerFlow recovers, R = mean_s(PF_s - base_s) / mean_s(GRPO_s - base_s)
  (gains paired by seed), with a delta-method 95% interval: Var(R) ~= [Var(d_PF) - 2 R Cov(d_PF, d_GRPO)
  + R^2 Var(d_GRPO)] / (n mean(d_GRPO)^2), and a t_{0.975, n-1} quantile. Per-seed ratios are reported too.
"""

from __future__ import annotations

import math
import statistics

from ..evaluation.markdown import fmt

# 0.975 quantiles of Student's t by degrees of freedom (scipy is optional)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_quantile(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover
        return T_975.get(df, 1.96)


def mean_interval(values) -> dict:
    """Mean and 95% t-interval over seeds (no interval from one value)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0, "values": []}
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1, "values": values}
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values), "values": values}


def recovery_share(pf, grpo, base) -> dict:
    """R = mean(PF - base) / mean(GRPO - base), gains paired by seed, with a delta-method 95% t-interval."""
    d_pf = [p - b for p, b in zip(pf, base)]
    d_g = [g - b for g, b in zip(grpo, base)]
    n = len(d_pf)
    per_seed = [a / b if b else None for a, b in zip(d_pf, d_g)]
    m_pf, m_g = statistics.fmean(d_pf), statistics.fmean(d_g)
    out = {"share": m_pf / m_g if m_g else None, "per_seed": per_seed, "pf_gain": d_pf, "grpo_gain": d_g, "n": n}
    out["low"] = out["high"] = None
    if n >= 2 and m_g:
        r = m_pf / m_g
        cov = sum((a - m_pf) * (b - m_g) for a, b in zip(d_pf, d_g)) / (n - 1)
        var = (statistics.variance(d_pf) - 2 * r * cov + r * r * statistics.variance(d_g)) / (n * m_g * m_g)
        half = t_quantile(n - 1) * math.sqrt(max(var, 0.0))
        out["low"], out["high"] = r - half, r + half
    return out


def fmt_interval(stats: dict, digits: int = 3) -> str:
    if stats["mean"] is None:
        return "–"
    if stats["low"] is None:
        return fmt(stats["mean"], digits)
    return f"{fmt(stats['mean'], digits)} [{fmt(stats['low'], digits)}, {fmt(stats['high'], digits)}]"
