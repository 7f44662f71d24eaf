"""Causal leakage: exactly zero for per-token norms (and PowerNorm's forward after warm-up),
non-zero for every norm with statistics over the sequence axis, for a norm alone and inside a
causal decoder; and the stage's files."""

from __future__ import annotations

import pandas as pd
import pytest

from normrepro.insights import causal
from normrepro.insights.causal import CASES, METRICS, Case, measure

SMALL = dict(T=5, B=3, dim=8, prep_steps=8)
BY_LABEL = {c.label: c for c in CASES}
LEAKY = ("fwd_change", "grad_future", "bwd_change")


def _summary(label, level):
    df = pd.DataFrame(measure(BY_LABEL[label], level, **SMALL))
    assert list(df["t"]) == list(range(SMALL["T"] - 1))
    return {m: df[m].max() for m in METRICS} | {m + "_min": df[m].min() for m in METRICS}


@pytest.mark.parametrize("level", ["norm", "decoder"])
@pytest.mark.parametrize("label", ["layer", "rms", "group"])
def test_per_token_norms_do_not_leak_at_all(label, level):
    s = _summary(label, level)
    for m in LEAKY + ("train_eval",):
        assert s[m] == 0.0, f"{label}/{level}: {m} = {s[m]}"
    # generation runs on the shorter prefix: a decoder's matmuls of another shape round
    # differently (~1e-16); a norm alone computes each token identically
    gen = s["train_vs_generation"]
    assert gen == 0.0 if level == "norm" else gen < 1e-12


@pytest.mark.parametrize("level", ["norm", "decoder"])
@pytest.mark.parametrize("label", ["batch", "power_vanilla", "power (warm-up)"])
def test_batch_statistics_leak_forward_and_backward(label, level):
    s = _summary(label, level)
    for m in LEAKY:  # at every position t, not only on average
        assert s[m + "_min"] > 1e-3, f"{label}/{level}: {m} min = {s[m + '_min']}"
    assert s["train_eval"] > 1e-3 and s["train_vs_generation_min"] > 1e-3


@pytest.mark.parametrize("level", ["norm", "decoder"])
def test_instance_norm_leaks_over_time_and_differs_at_generation(level):
    s = _summary("instance", level)
    for m in LEAKY:
        assert s[m + "_min"] > 1e-3
    assert s["train_eval"] == 0.0  # no running statistics: eval = train on a full sequence
    assert s["train_vs_generation_min"] > 1e-3  # but generation only has the prefix


@pytest.mark.parametrize("level", ["norm", "decoder"])
def test_power_after_warmup_forward_is_causal_but_backward_is_not(level):
    s = _summary("power (after warm-up)", level)
    assert s["fwd_change"] == 0.0  # forward uses the running ψ² from before the step
    assert s["grad_future_min"] > 1e-3  # −ν·z reaches every position
    assert s["bwd_change_min"] > 1e-3  # the gradient is divided by the batch ψ_B
    # train and eval compute the same function; only float rounding differs
    assert s["train_eval"] < 1e-12 and s["train_vs_generation"] < 1e-12


def test_power_case_must_match_its_warmup_phase():
    with pytest.raises(ValueError, match="inside warm-up"):
        measure(Case("p", "power", {"warmup_iters": 50}, warmup=False), **SMALL)


def test_cli_writes_tables_and_figure(tmp_path):
    causal.main(["--out", str(tmp_path), "--T", "4", "--B", "2", "--prep-steps", "6"])
    summary = pd.read_csv(tmp_path / "causal.csv")
    assert len(summary) == 2 * len(CASES)
    assert set(summary["level"]) == {"norm", "decoder"}
    assert {f"{m}_max" for m in METRICS} | set(METRICS) <= set(summary.columns)
    assert len(pd.read_csv(tmp_path / "by_position.csv")) == 2 * len(CASES) * 3
    for f in ("causal.png", "causal.pdf"):
        assert (tmp_path / f).stat().st_size > 0
