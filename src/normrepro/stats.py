"""Seeds → mean, standard deviation and Student-t 95% confidence intervals.

Used by both replications' summary stages so the same statistics back every table, and by
`normrepro.paper` for the intervals of a paper's own numbers (mean ± std over its seeds).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import stats as _st


def _clean(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def summarize(values: Iterable[float], confidence: float = 0.95) -> dict:
    """n, mean, sample std (ddof=1) and a t-interval for the mean; non-finite values are dropped.

    With fewer than two finite values std and the interval are NaN: one seed says nothing about
    seed-to-seed spread, and the table should show that rather than a fake ±0.
    """
    arr = _clean(values)
    n = int(arr.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "ci_half": nan}
    mean = float(arr.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": nan, "ci_low": nan, "ci_high": nan, "ci_half": nan}
    std = float(arr.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half,
            "ci_half": half}


def diff_ci(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> dict:
    """Difference of means mean(b) − mean(a) with a Welch t-interval (unequal variances).

    Treats the two arms as independent samples; the paired interval (`paired_diff_ci`) is the
    primary one where arms share seeds, this one is kept as a secondary column.
    """
    xa, xb = _clean(a), _clean(b)
    nan = float("nan")
    out = {"n_a": int(xa.size), "n_b": int(xb.size), "diff": nan, "ci_low": nan, "ci_high": nan,
           "ci_half": nan}
    if xa.size == 0 or xb.size == 0:
        return out
    diff = float(xb.mean() - xa.mean())
    out["diff"] = diff
    if xa.size < 2 or xb.size < 2:
        return out
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        half = 0.0
    else:
        dof = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
        half = float(_st.t.ppf(0.5 + confidence / 2, dof) * se)
    out.update(ci_low=diff - half, ci_high=diff + half, ci_half=half)
    return out


def paired_diff_ci(a: dict, b: dict, confidence: float = 0.95) -> dict:
    """Per-seed paired difference b[seed] − a[seed] with a paired-t interval.

    `a` and `b` map seed → value. Arms that share seeds share the data order, the held-out split
    and (where the architectures allow) the initialisation, so much of the seed-to-seed noise
    cancels in the per-seed difference; the interval is the one-sample t-interval of those
    differences. Only seeds with a finite value in both arms are paired (`n` counts them).
    """
    nan = float("nan")
    seeds = sorted(s for s in set(a) & set(b)
                   if math.isfinite(float(a[s])) and math.isfinite(float(b[s])))
    d = np.asarray([float(b[s]) - float(a[s]) for s in seeds], dtype=float)
    out = {"n": int(d.size), "seeds": seeds, "diff": nan, "std": nan, "ci_low": nan,
           "ci_high": nan, "ci_half": nan}
    if d.size == 0:
        return out
    out["diff"] = float(d.mean())
    if d.size < 2:
        return out
    std = float(d.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, d.size - 1) * std / math.sqrt(d.size))
    out.update(std=std, ci_low=out["diff"] - half, ci_high=out["diff"] + half, ci_half=half)
    return out


def t_half_width(std: float | None, n: int, confidence: float = 0.95) -> float:
    """Half-width of the t-interval of a mean from a stated std over `n` runs (a paper's
    "mean ± std over 3 seeds"); NaN without a std or with fewer than 2 runs."""
    if std is None or n < 2:
        return math.nan
    return float(_st.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))


def welch_from_stats(mean_a: float, std_a: float | None, n_a: int,
                     mean_b: float, std_b: float | None, n_b: int,
                     confidence: float = 0.95) -> dict:
    """mean_b − mean_a with a Welch half-width, from summary statistics only (a paper's table);
    the half-width is NaN without both stds or with fewer than 2 runs per arm."""
    diff = float(mean_b) - float(mean_a)
    if std_a is None or std_b is None or n_a < 2 or n_b < 2:
        return {"diff": diff, "ci_half": math.nan}
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "ci_half": 0.0}
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return {"diff": diff, "ci_half": float(_st.t.ppf(0.5 + confidence / 2, dof) * se)}


def format_pm(mean: float, half: float, digits: int = 2) -> str:
    """'81.47 ± 0.09' (or '81.47 ± n/a' when the interval is undefined)."""
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(half):
        return f"{mean:.{digits}f} ± n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"
