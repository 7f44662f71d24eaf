"""Tests of the report and plot helpers, and of the ConvNeXt report on hand-made results."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from normrepro import plots
from normrepro import report as rp
from normrepro.config import dump, resolve
from normrepro.stages import plot as stplot
from normrepro.stages import report as streport
from normrepro.stages import summarize as stsum
from normrepro.tasks.image_classification.metrics import write_metrics_csv
from normrepro.paper import load_paper, verdict
from normrepro.provenance import write_env_json
from normrepro.stats import format_pm, paired_diff_ci

REPL = Path(__file__).resolve().parents[2] / "replications" / "convnext"


# ---------------------------------------------------------------- generic helpers

def test_markdown_table_formats_and_aligns():
    rows = [{"arm": "bn", "acc": 81.4149, "n": 3, "note": None},
            {"arm": "ln|x", "acc": float("nan"), "n": 2, "note": "+0.06"}]
    text = rp.markdown_table(rows, {"arm": "Arm", "acc": "Top-1", "n": "n", "note": "d"},
                             digits={"acc": 1})
    lines = text.splitlines()
    assert lines[0] == "| Arm | Top-1 | n | d |"
    assert lines[1] == "| :--- | ---: | ---: | ---: |"  # "+0.06" is numeric text
    assert lines[2] == "| bn | 81.4 | 3 | n/a |"
    assert lines[3] == "| ln\\|x | n/a | 2 | +0.06 |"
    assert rp.markdown_table(pd.DataFrame(rows), ["arm"]).splitlines()[2] == "| bn |"


def test_small_formatters():
    assert rp.fmt_num(None) == "n/a" and rp.fmt_num(True) == "yes" and rp.fmt_num(1.234, 1) == "1.2"
    assert rp.fmt_duration(42) == "42 s" and rp.fmt_duration(600) == "10.0 min"
    assert rp.fmt_duration(7200 * 2) == "4.0 h" and rp.fmt_duration(None) == "n/a"
    block = rp.regenerate_block(["make a", "make b"], "Run:")
    assert block == "Run:\n\n```bash\nmake a\nmake b\n```"
    assert rp.column_docs({"x": "the x"}) == "- `x`: the x"


def test_figure_line_is_relative_to_the_report(tmp_path):
    fig = tmp_path / "results" / "figures" / "f.png"
    fig.parent.mkdir(parents=True)
    fig.write_bytes(b"png")
    report = tmp_path / "results" / "report.md"
    assert rp.figure_line(fig, report, "alt") == "![alt](figures/f.png)"
    fig.with_suffix(".pdf").write_bytes(b"pdf")
    assert rp.figure_line(fig, report, "alt").endswith("[PDF](figures/f.pdf)")


def test_environment_section_aggregates_env_files(tmp_path):
    a = write_env_json(tmp_path / "a.json", wall_time_s=30.0)
    write_env_json(tmp_path / "b.json", wall_time_s=90.0)
    text = rp.environment_section([tmp_path / "a.json", tmp_path / "b.json",
                                   tmp_path / "missing.json"])
    assert "2.0 min in total over 2 runs (longest 90 s)" in text
    assert a["packages"]["torch"] in text
    assert rp.environment_section([tmp_path / "none.json"]).startswith("No env.json")


def test_write_report_is_atomic_and_newline_terminated(tmp_path):
    path = rp.write_report(tmp_path / "r" / "report.md", "# hi\n\n\n")
    assert path.read_text() == "# hi\n"
    assert not [p for p in path.parent.iterdir() if p.name != "report.md"]


# ---------------------------------------------------------------- generic plots

def test_plots_write_png_and_pdf(tmp_path):
    curves = pd.DataFrame({"arm": ["a", "a", "b", "b"] * 2, "seed": [0] * 4 + [1] * 4,
                           "epoch": [1, 2] * 4, "loss": [2, 1, 2.1, 1.2, 1.9, 1.1, 2, 1.3],
                           "val": [float("nan")] * 8})
    written = plots.learning_curves(curves, "epoch", ["loss", "val"], "arm", tmp_path / "lc")
    assert [p.name for p in written] == ["lc.png", "lc.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
    with pytest.raises(ValueError, match="has data"):
        plots.learning_curves(curves, "epoch", ["val"], "arm", tmp_path / "none")
    runs = pd.DataFrame({"arm": ["a", "a", "b", "b"], "status": ["ok", "ok", "ok", "diverged"],
                         "acc": [80.0, 81.0, 82.0, float("nan")]})
    assert len(plots.final_per_arm(runs, "acc", tmp_path / "final")) == 2
    table = pd.DataFrame({"name": ["a", "b"], "mean": [1.0, 2.0], "ci_half": [0.1, float("nan")]})
    diffs = pd.DataFrame({"source": ["ours", "paper"], "name": ["b - a"] * 2,
                          "mean": [1.0, 0.1], "ci_half": [0.5, 0.2]})
    assert len(plots.ours_vs_paper(table, table, tmp_path / "ovp", diffs=diffs)) == 2
    # Regenerating from the same data gives the same PDF bytes (no creation date).
    before = (tmp_path / "ovp.pdf").read_bytes()
    plots.ours_vs_paper(table, table, tmp_path / "ovp", diffs=diffs)
    assert (tmp_path / "ovp.pdf").read_bytes() == before


# The paper's numbers and the verdict rule's cases are in test_paper.py.


# ---------------------------------------------------------------- ConvNeXt report end to end

BN, LN = [90.0, 90.2, 90.4], [90.5, 90.6, 90.7]


def _hand_made_results(results: Path) -> list[Path]:
    runs = []
    ds = results / "fashion-mnist"
    for arm, values in (("bn", BN + [None]), ("ln", LN)):
        for seed, value in enumerate(values):
            run = ds / arm / f"seed{seed}"
            run.mkdir(parents=True)
            cfg = resolve(REPL, "cpu", arm, seed)
            (run / "config.yaml").write_text(dump(cfg))
            status = "ok" if value is not None else "diverged"
            write_env_json(run / "env.json", wall_time_s=100.0, train={
                "status": status, "epochs_completed": 10, "train_time_s": 95.0,
                "effective_batch": 128, "world_size": 1, "lr": 1.25e-4, "precision": "32-true",
                "split_sizes": {"train": 15000, "val": 2000, "test": 10000}})
            final = {"status": status, "test_top1": value,
                     "test_top5": None if value is None else value + 9, "n_test": 10000,
                     "parameters": 3_373_240, "test_split": "test"}
            (run / "final.json").write_text(json.dumps(final))
            write_metrics_csv(run / "metrics.csv", [
                {"epoch": e, "step": 117 * e, "train_loss": 2.0 / e, "val_loss": 1.0 / e,
                 "val_top1": 80.0 + e, "val_top5": 99.0, "lr": 1e-4, "epoch_time_s": 10.0,
                 "train_time_s": 9.0, "train_images_per_s": 500.0} for e in (1, 2)])
            runs.append(run)
    return runs


def test_convnext_report_from_hand_made_results(tmp_path):
    results = tmp_path / "results" / "convnext"
    runs = _hand_made_results(results)
    ds = results / "fashion-mnist"
    assert stsum.main(["--replication", str(REPL), "--out", str(ds / "summary.csv"),
                       "--runs", *map(str, runs)]) == 0
    assert stplot.main(["--replication", str(REPL), "--summary", str(ds / "summary.csv"),
                        "--out-dir", str(results / "figures")]) == 0
    out = results / "report.md"
    assert streport.main(["--replication", str(REPL), "--results", str(results),
                          "--out", str(out)]) == 0
    text = out.read_text()

    d = paired_diff_ci(dict(enumerate(BN)), dict(enumerate(LN)))  # seeds 0-2 in both arms
    claim = load_paper(REPL / "paper.yaml").claims[0]
    margin = claim.tests[0].margin
    category, sentence = verdict("non_inferiority", d["diff"], d["ci_low"], d["ci_high"], margin, 3,
                                 "BN", "LN", 1, 0, unit="points")  # BN diverged once
    assert f"LN − BN = **{d['diff']:+.2f} ± {d['ci_half']:.2f}** points" in text
    assert "paired over 3 seeds" in text and "Measured in: fashion-mnist" in text
    assert f"**{claim.text}** (primary, non-inferiority, margin {margin:g} points)" in text
    assert sentence in text and category == "supported"
    assert "Rule (every replication)" in text
    assert "| 1 / 4 |" in text  # BN's divergence rate
    assert "| bn | 3 / 4 |" in text and "1/4 diverged" in text
    assert "| bn | 3 | diverged | n/a | n/a |" in text
    paper = yaml.safe_load((REPL / "paper.yaml").read_text())
    p = paper["results"][paper["primary"]]["arms"]
    assert format_pm(p["bn"]["mean"], p["bn"]["std"]) in text
    assert paper["paper"]["arxiv"] in text
    assert "15000 training images" in text and "`convnext_atto`" in text
    epochs = resolve(REPL, "cpu", "ln", 0)["trainer"]["max_epochs"]
    assert f"`trainer.max_epochs`: paper 300, ours {epochs}" in text
    assert "![ours vs paper](figures/fashion-mnist-ours-vs-paper.png)" in text
    for column in ("n_diverged", "ci_half", "train_images_per_s"):
        assert f"`{column}`" in text
    assert 'make replicate-convnext PROFILE=cpu DATASET=fashion-mnist SEEDS="0 1 2 3"' in text
    # Every number of our table is in summary.csv.
    summary = pd.read_csv(ds / "summary.csv")
    for row in summary[summary["metric"] == "test_top1"].itertuples():
        assert format_pm(row.mean, row.ci_half) in text


def test_report_without_results_says_what_to_run(tmp_path, capsys):
    assert streport.main(["--replication", str(REPL), "--results", str(tmp_path),
                          "--out", str(tmp_path / "r.md")]) == 2
    assert "summarize" in capsys.readouterr().err
