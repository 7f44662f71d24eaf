"""Stage `plot`: the figures of the PowerNorm report, PNG and PDF each.

    python -m normrepro.translation.plot --summary results/powernorm/<profile>/<data>/summary.csv \\
        --paper replications/powernorm/paper.yaml --out-dir results/powernorm/<profile>/figures

Reads summary.csv, runs.csv beside it and each run's metrics.csv; writes, prefixed by the data
folder name:

  <data>-curves         validation loss (bits/token) and greedy validation BLEU per update,
                        mean over seeds per arm with a ±1 std band
  <data>-final-bleu     test tokenized BLEU per arm: bar = mean with 95% CI, dots = seeds
  <data>-ours-vs-paper  our arms, the paper's Table 1 arms, and the claims' differences
                        (PN − LN, LN − BN) of both
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from normrepro import plots
from normrepro.config import load_yaml
from normrepro.errors import cli
from normrepro.summary import collect_curves, read_summary, resolve_run_dirs
from normrepro.translation.summarize import ARM_ORDER

LABELS = {"updates": "updates", "val_loss": "validation loss (bits/token, label-smoothed)",
          "val_bleu": "greedy validation BLEU (subset)", "train_loss": "training loss (bits/token)"}


def figure_paths(out_dir: str | Path, data_name: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {k: out_dir / f"{data_name}-{k}" for k in ("curves", "final-bleu", "ours-vs-paper")}


def paper_results(paper: dict, dataset: str = "iwslt14") -> dict:
    res = paper["results"][dataset]
    return {arm: float(v["bleu"]) for arm, v in res["arms"].items()}


def plot_all(summary_csv: str | Path, paper_yaml: str | Path, out_dir: str | Path) -> list[Path]:
    summary_csv = Path(summary_csv)
    summary = read_summary(summary_csv)
    runs = pd.read_csv(summary_csv.with_name("runs.csv"))
    data_name = summary_csv.parent.name
    stems = figure_paths(out_dir, data_name)
    order = [a for a in ARM_ORDER if a in set(runs["arm"])] + sorted(set(runs["arm"]) - set(ARM_ORDER))
    written: list[Path] = []

    curves = collect_curves(resolve_run_dirs(runs, summary_csv.parent))
    if not curves.empty:
        cols = [c for c in ("val_loss", "val_bleu") if c in curves and curves[c].notna().any()]
        if cols:
            written += plots.learning_curves(curves, "updates", cols, "arm", stems["curves"], hue_order=order,
                                             labels=LABELS, title=f"{data_name}: mean ± 1 std over seeds")
    written += plots.final_per_arm(runs, "test_bleu_tok", stems["final-bleu"], order=order,
                                   ylabel="test BLEU (tokenized)", title=f"{data_name}: seeds and 95% CI")

    paper = load_yaml(paper_yaml)
    theirs = paper_results(paper)
    bleu = summary[summary["metric"] == "test_bleu_tok"]
    ours = bleu[bleu["kind"] == "arm"][["name", "mean", "ci_half"]]
    ours = ours.set_index("name").reindex([a for a in order if a in set(ours["name"])]).reset_index()
    paper_arms = pd.DataFrame([{"name": a, "mean": theirs[a], "ci_half": math.nan}
                               for a in ARM_ORDER if a in theirs])
    diffs = []
    for claim in paper.get("claims", []):
        a, b = claim["a"], claim["b"]
        row = bleu[(bleu["kind"] == "diff") & (bleu["name"] == f"{b} - {a}")]
        if len(row):
            diffs.append({"source": "ours", "name": f"{b}-{a}", "mean": float(row["mean"].iloc[0]),
                          "ci_half": float(row["ci_half"].iloc[0])})
        if a in theirs and b in theirs:
            diffs.append({"source": "paper", "name": f"{b}-{a}", "mean": theirs[b] - theirs[a], "ci_half": math.nan})
    written += plots.ours_vs_paper(ours, paper_arms, stems["ours-vs-paper"], diffs=pd.DataFrame(diffs),
                                   ylabel="test BLEU (tokenized)", ours_title=f"ours: {data_name}",
                                   paper_title=f"paper: {paper['results']['iwslt14']['label']}",
                                   diff_label="difference (BLEU), 95% CI")
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
