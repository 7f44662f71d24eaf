"""Reduction axes measured by perturbation for every registry norm, the generated answer to
"is transformer LayerNorm instance norm?", and the stage's files."""

from __future__ import annotations

import pandas as pd
import pytest

from normrepro.insights import axes
from normrepro.insights.axes import measure
from normrepro.norms import NORM_NAMES

# (extent over B, C, S) that each norm must show; S = tokens or H×W positions
EXPECTED = {
    "layer": ("one", "all", "one"),
    "rms": ("one", "all", "one"),
    "group": ("one", "4 of 8", "one"),
    "instance": ("one", "one", "all"),
    "batch": ("all", "one", "all"),
    "batch_unmasked": ("all", "one", "all"),  # no padding here: the same as batch
    "bn_official": ("all", "all", "all"),  # the token's RMS over C, then statistics over B × T
    "sync_batch": ("all", "one", "all"),
    "power_vanilla": ("all", "one", "all"),
    "power": ("all", "4 of 8", "all"),  # GroupScaling (token's group) then ψ² over B × T
    "layer2d": ("one", "all", "one"),
    "batch2d": ("all", "one", "all"),
    "sync_batch2d": ("all", "one", "all"),
    "group2d": ("one", "4 of 8", "all"),
    "instance2d": ("one", "one", "all"),
    "dyt": ("one", "one", "one"),  # element-wise: no statistic, one output per input
    "dyt2d": ("one", "one", "one"),
}


def test_every_registry_norm_has_an_expectation():
    assert set(EXPECTED) == set(NORM_NAMES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_measured_axes(name):
    m = measure(name)
    assert tuple(m.extent(a) for a in ("B", "C", "S")) == EXPECTED[name]
    assert m.is_product  # a box around the perturbed element
    assert m.shared[m.perturbed]


def test_wu_he_layernorm_is_group2d_with_one_group():
    m = measure("group2d", num_groups=1)
    assert tuple(m.extent(a) for a in ("B", "C", "S")) == ("one", "all", "all")


def test_answer_says_no_from_the_measurement():
    measured = {n: measure(n) for n in ("layer", "instance", "layer2d")}
    text = axes.answer(measured)
    assert "**No.**" in text
    assert "`layer` reduces over C and `instance` over T" in text
    assert "channel and token axes swapped" in text
    assert "the same pattern as transformer LayerNorm" in text
    # if the two measured sets were equal, the answer would flip
    measured["instance"] = measured["layer"]
    assert "**Yes.**" in axes.answer(measured)


def test_cli_writes_table_answer_and_cubes(tmp_path):
    axes.main(["--out", str(tmp_path)])
    df = pd.read_csv(tmp_path / "axes.csv")
    assert set(df["norm"]) == set(NORM_NAMES)
    row = df.set_index("norm").loc["layer"]
    assert row["reduced_over"] == "C" and row["one_statistic_per"] == "B (sentences), T (tokens)"
    assert (tmp_path / "answer.md").read_text().startswith("# Is transformer LayerNorm instance norm?")
    for f in ("cubes.png", "cubes.pdf"):
        assert (tmp_path / f).stat().st_size > 0
