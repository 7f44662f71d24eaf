"""Stage `plot`: the three figures of the ConvNeXt report, PNG and PDF each.

    python -m normrepro.convnext.plot --summary results/convnext/<dataset>/summary.csv \
        --paper replications/convnext/paper.yaml --out-dir results/convnext/figures

Reads summary.csv, runs.csv beside it (which runs belong to this summary) and each run's
metrics.csv. Writes into OUT-DIR, prefixed with the data set name:

  <dataset>-learning-curves   training loss and held-out top-1 per epoch, mean over seeds per
                              arm with a ±1 std band
  <dataset>-final-top1        test top-1 per arm: bar = mean with 95% CI, dots = seeds
  <dataset>-ours-vs-paper     our arms, the paper's arms (its `primary` results), and each
                              claim's difference (LN - BN) of both with 95% CIs

The arms' order, the paper's numbers and the claims come from paper.yaml (`normrepro.paper`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from normrepro import plots
from normrepro.errors import cli
from normrepro.paper import load_paper
from normrepro.summary import collect_curves, read_summary, resolve_run_dirs

LABELS = {"epoch": "epoch", "train_loss": "training loss (label-smoothed CE)",
          "val_top1": "held-out top-1 (%)", "val_loss": "held-out loss"}


def figure_paths(out_dir: str | Path, dataset: str) -> dict[str, Path]:
    """Stems of the figures for one data set (add .png / .pdf)."""
    out_dir = Path(out_dir)
    return {k: out_dir / f"{dataset}-{k}" for k in ("learning-curves", "final-top1",
                                                   "ours-vs-paper")}


def plot_all(summary_csv: str | Path, paper_yaml: str | Path, out_dir: str | Path) -> list[Path]:
    summary_csv = Path(summary_csv)
    summary = read_summary(summary_csv)
    runs = pd.read_csv(summary_csv.with_name("runs.csv"))
    dataset = summary_csv.parent.name
    stems = figure_paths(out_dir, dataset)
    paper = load_paper(paper_yaml)
    order = paper.arm_order(runs["arm"])
    written: list[Path] = []

    curves = collect_curves(resolve_run_dirs(runs, summary_csv.parent))
    try:
        written += plots.learning_curves(curves, "epoch", ["train_loss", "val_top1"], "arm",
                                         stems["learning-curves"], hue_order=order,
                                         labels=LABELS, title=f"{dataset}: mean ± 1 std over seeds")
    except (ValueError, KeyError):
        # No run has a finite curve (all missing or diverged at once): the other figures and
        # the report still say what happened.
        print(f"[plot] {dataset}: no learning curves to draw", flush=True)
    written += plots.final_per_arm(runs, paper.metric.name, stems["final-top1"], order=order,
                                   ylabel=f"test {paper.metric.label}",
                                   title=f"{dataset}: seeds and 95% CI")
    written += plots.ours_vs_paper_of_claims(summary, paper, order, stems["ours-vs-paper"],
                                             ours_title=f"ours: {dataset} (test)")
    return written


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.convnext.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", required=True, help="results/convnext/<dataset>/summary.csv")
    parser.add_argument("--paper", required=True, help="replications/convnext/paper.yaml")
    parser.add_argument("--out-dir", required=True, help="folder for the figures")
    args = parser.parse_args(argv)
    try:
        written = plot_all(args.summary, args.paper, args.out_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[plot] wrote {len(written)} files to {args.out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
