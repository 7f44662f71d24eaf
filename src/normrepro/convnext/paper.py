"""Read `replications/convnext/paper.yaml`, the only home of the paper's numbers.

Turns the stored mean ± std per arm into the same shapes our own summary has (mean, 95% CI
half-width of each arm and of LN - BN), so the report and the ours-vs-paper figure compare like
with like. The paper reports standard deviations over 3 seeds; intervals are derived from those
with the Student/Welch t formulas, assuming independent seeds per arm, as for our runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from scipy import stats as st

from normrepro.config import ConfigError, load_yaml


def load_paper(path: str | Path) -> dict:
    paper = load_yaml(path)
    for key in ("paper", "claim", "metric", "primary", "results"):
        if key not in paper:
            raise ConfigError(f"{path}: missing top-level key {key!r}")
    if paper["primary"] not in paper["results"]:
        raise ConfigError(f"{path}: primary={paper['primary']!r} is not one of "
                          f"{sorted(paper['results'])}")
    for name, regime in paper["results"].items():
        for arm in ("bn", "ln"):
            if not isinstance(regime.get(arm), dict) or "mean" not in regime[arm]:
                raise ConfigError(f"{path}: results.{name}.{arm} needs at least a mean")
    return paper


def _half_width(std: float | None, n: int) -> float:
    if std is None or n < 2:
        return math.nan
    return float(st.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def welch_from_stats(mean_a: float, std_a: float | None, n_a: int,
                     mean_b: float, std_b: float | None, n_b: int) -> dict:
    """mean_b - mean_a with a Welch 95% half-width, from summary statistics only."""
    diff = float(mean_b) - float(mean_a)
    if std_a is None or std_b is None or n_a < 2 or n_b < 2:
        return {"diff": diff, "ci_half": math.nan}
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "ci_half": 0.0}
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return {"diff": diff, "ci_half": float(st.t.ppf(0.975, dof) * se)}


def regime_table(paper: dict, regime: str | None = None) -> dict:
    """{'label', 'source', 'arms': [{name, mean, std, ci_half}], 'diff': {diff, ci_half}}."""
    name = regime or paper["primary"]
    r = paper["results"][name]
    n = int(r.get("seeds") or 1)  # null: not stated (treated as one run: no interval)
    arms = []
    for arm in ("bn", "ln"):
        mean, std = float(r[arm]["mean"]), r[arm].get("std")
        arms.append({"name": arm, "mean": mean, "std": std, "ci_half": _half_width(std, n)})
    diff = welch_from_stats(arms[0]["mean"], arms[0]["std"], n, arms[1]["mean"], arms[1]["std"], n)
    return {"regime": name, "label": r.get("label", name), "source": r.get("source", ""),
            "transcribed_from": r.get("transcribed_from"), "seeds": n,
            "seeds_stated": r.get("seeds"), "arms": arms, "diff": diff}
