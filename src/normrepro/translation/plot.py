"""Stage `plot`: the figures of the PowerNorm report, PNG and PDF each.

    python -m normrepro.translation.plot --summary results/powernorm/<profile>/<data>/summary.csv \\
        --paper replications/powernorm/paper.yaml --out-dir results/powernorm/<profile>/figures

Reads summary.csv, runs.csv beside it and each run's metrics.csv; writes, prefixed by the data
folder name:

  <data>-curves         validation loss (bits/token) and greedy validation BLEU per update,
                        mean over seeds per arm with a ±1 std band
  <data>-final-bleu     test tokenized BLEU per arm: bar = mean with 95% CI, dots = seeds
  <data>-ours-vs-paper  our arms, the paper's arms (its `primary` results), and the claims'
                        differences (PN − LN, LN − BN) of both

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

LABELS = {"updates": "updates", "val_loss": "validation loss (bits/token, label-smoothed)",
          "val_bleu": "greedy validation BLEU (subset)", "train_loss": "training loss (bits/token)"}


def figure_paths(out_dir: str | Path, data_name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {k: out_dir / f"{data_name}-{k}" for k in ("curves", "final-bleu", "ours-vs-paper")}


def plot_all(summary_csv: str | Path, paper_yaml: str | Path, out_dir: str | Path) -> list[Path]:
    summary_csv = Path(summary_csv)
    summary = read_summary(summary_csv)
    runs = pd.read_csv(summary_csv.with_name("runs.csv"))
    data_name = summary_csv.parent.name
    stems = figure_paths(out_dir, data_name)
    paper = load_paper(paper_yaml)
    order = paper.arm_order(runs["arm"])
    written: list[Path] = []

    curves = collect_curves(resolve_run_dirs(runs, summary_csv.parent))
    if not curves.empty:
        cols = [c for c in ("val_loss", "val_bleu") if c in curves and curves[c].notna().any()]
        if cols:
            written += plots.learning_curves(curves, "updates", cols, "arm", stems["curves"], hue_order=order,
                                             labels=LABELS, title=f"{data_name}: mean ± 1 std over seeds")
    written += plots.final_per_arm(runs, paper.metric.name, stems["final-bleu"], order=order,
                                   ylabel=f"test {paper.metric.label}", title=f"{data_name}: seeds and 95% CI")
    written += plots.ours_vs_paper_of_claims(summary, paper, order, stems["ours-vs-paper"],
                                             ours_title=f"ours: {data_name}")
    return written


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.translation.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--paper", default="replications/powernorm/paper.yaml")
    parser.add_argument("--out-dir", required=True)
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
