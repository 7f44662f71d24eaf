"""Tests of normrepro.summary on hand-made result folders (ok, diverged and missing runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normrepro import stats
from normrepro.summary import (SUMMARY_COLUMNS, collect_curves, collect_runs, find_run_dirs,
                               main, resolve_run_dirs, summarize_runs, write_summary)

VALUES = {"a": {0: 80.0, 1: 81.0, 2: 82.5}, "b": {0: 81.5, 1: 82.0}}


def _make_results(root: Path) -> Path:
    for arm, seeds in VALUES.items():
        for seed, value in seeds.items():
            run = root / arm / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "final.json").write_text(json.dumps({"status": "ok", "acc": value,
                                                        "acc5": value + 10}))
            pd.DataFrame({"epoch": [1, 2], "loss": [2.0 - seed * 0.1, 1.0]}).to_csv(
                run / "metrics.csv", index=False)
    diverged = root / "b" / "seed2"
    diverged.mkdir(parents=True)
    # A diverged run keeps whatever numbers it has out of the statistics.
    (diverged / "final.json").write_text(json.dumps({"status": "diverged", "acc": 10.0}))
    (root / "b" / "seed3").mkdir()  # started, never finished
    return root


def test_collect_runs_records_every_status(tmp_path):
    root = _make_results(tmp_path / "res")
    runs = collect_runs(root, ["acc", "acc5"])
    assert list(zip(runs["arm"], runs["seed"], runs["status"])) == [
        ("a", 0, "ok"), ("a", 1, "ok"), ("a", 2, "ok"),
        ("b", 0, "ok"), ("b", 1, "ok"), ("b", 2, "diverged"), ("b", 3, "missing")]
    assert math.isnan(runs.loc[5, "acc"]) and math.isnan(runs.loc[6, "acc5"])
    assert list(runs["run_dir"][:2]) == ["a/seed0", "a/seed1"]
    assert resolve_run_dirs(runs, root)[0] == root / "a/seed0"
    only = collect_runs(root, ["acc"], runs=[root / "b" / "seed1"])
    assert list(only["seed"]) == [1]
    assert len(find_run_dirs(root)) == 7


def test_summary_statistics_and_difference(tmp_path):
    root = _make_results(tmp_path / "res")
    runs = collect_runs(root, ["acc", "acc5"])
    summary = summarize_runs(runs, ["acc", "acc5"], pairs=[("a", "b")])
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    acc = summary[summary["metric"] == "acc"].set_index("name")
    a_vals, b_vals = list(VALUES["a"].values()), list(VALUES["b"].values())
    assert acc.loc["a", "mean"] == pytest.approx(np.mean(a_vals))
    assert acc.loc["a", "std"] == pytest.approx(np.std(a_vals, ddof=1))
    assert acc.loc["a", "ci_half"] == pytest.approx(stats.summarize(a_vals)["ci_half"])
    assert acc.loc["a", "status"] == "ok" and acc.loc["a", "n"] == 3
    b = acc.loc["b"]
    assert (b["n"], b["n_runs"], b["n_diverged"], b["n_missing"]) == (2, 4, 1, 1)
    assert b["mean"] == pytest.approx(np.mean(b_vals))  # the diverged 10.0 is not averaged
    assert b["status"] == "1/4 diverged, 1/4 missing"
    d = acc.loc["b - a"]
    ref = stats.diff_ci(a_vals, b_vals)
    assert d["kind"] == "diff" and d["welch_diff"] == pytest.approx(ref["diff"])
    assert (d["welch_ci_low"], d["welch_ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]))
    a_ok = {s: v for s, v in VALUES["a"].items()}
    b_ok = {s: v for s, v in VALUES["b"].items()}
    paired = stats.paired_diff_ci(a_ok, b_ok)
    assert d["mean"] == pytest.approx(paired["diff"]) and d["n"] == paired["n"]
    assert d["n_diverged"] == 1 and d["divergence_rate"] == pytest.approx(1 / 7)
    with pytest.raises(ValueError, match="no runs"):
        summarize_runs(runs, ["acc"], pairs=[("a", "zzz")])


def test_write_summary_and_cli(tmp_path):
    root = _make_results(tmp_path / "res")
    out = root / "summary.csv"
    assert main(["--root", str(root), "--metrics", "acc", "--pair", "a:b", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert set(table["kind"]) == {"arm", "diff"}
    runs = pd.read_csv(root / "runs.csv")
    assert list(runs["status"]).count("diverged") == 1
    # Rewriting with the same inputs gives the same bytes (atomic rewrite, stable format).
    before = out.read_bytes()
    write_summary(collect_runs(root, ["acc"]), ["acc"], out, pairs=[("a", "b")])
    assert out.read_bytes() == before
    assert main(["--root", str(tmp_path / "empty"), "--metrics", "acc", "--out",
                 str(tmp_path / "x.csv")]) == 2


def test_collect_curves_adds_arm_and_seed(tmp_path):
    root = _make_results(tmp_path / "res")
    curves = collect_curves(find_run_dirs(root))
    assert len(curves) == 2 * 5  # five runs have metrics.csv
    assert set(curves.columns) == {"arm", "seed", "epoch", "loss"}
    assert collect_curves([]).empty


def test_run_folder_names_are_checked(tmp_path):
    bad = tmp_path / "a" / "run0"
    bad.mkdir(parents=True)
    with pytest.raises(ValueError, match="seed<k>"):
        collect_runs(tmp_path, ["acc"], runs=[bad])
