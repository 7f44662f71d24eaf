"""Stage `plot`: the figures of a replication's report, PNG and PDF each.

    python -m normrepro.stages.plot --replication replications/<name> \\
        --summary results/<name>/<profile>/<data>/summary.csv --out-dir results/<name>/<profile>/figures

The same for every replication. Reads summary.csv, runs.csv beside it (which runs belong to this
summary) and each run's metrics.csv; writes into OUT-DIR, prefixed with the data folder's name
(the stems are the task's `SPEC.figures`):

  curves          the task's learning curves (`SPEC.curve_columns` against `SPEC.curve_x`), mean
                  over seeds per arm with a ±1 std band; a column no run has a value of is left
                  out, and the figure too when none has
  final           the paper's metric on the test set per arm: bar = mean with 95% CI, dots = seeds
  ours-vs-paper   our arms, the paper's arms (its `primary` results) and each claim's difference
                  of both, with 95% CIs

The arms' order, the metric, the paper's numbers and the claims come from paper.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from normrepro import plots
from normrepro.errors import UserError, cli
from normrepro.paper import load_paper
from normrepro.stages._task import replication_task, spec
from normrepro.summary import collect_curves, read_summary, resolve_run_dirs
from normrepro.tasks import figure_paths


def plot_all(replication: str | Path, summary_csv: str | Path, out_dir: str | Path) -> list[Path]:
    task_spec = spec(replication_task(replication))
    summary_csv = Path(summary_csv)
    summary = read_summary(summary_csv)
    runs = pd.read_csv(summary_csv.with_name("runs.csv"))
    data_name = summary_csv.parent.name
    stems = figure_paths(task_spec, out_dir, data_name)
    paper = load_paper(Path(replication) / "paper.yaml")
    order = paper.arm_order(runs["arm"])
    written: list[Path] = []

    curves = collect_curves(resolve_run_dirs(runs, summary_csv.parent))
    columns = [c for c in task_spec.curve_columns
               if not curves.empty and c in curves and curves[c].notna().any()]
    if columns:
        written += plots.learning_curves(curves, task_spec.curve_x, columns, "arm", stems["curves"],
                                         hue_order=order, labels=task_spec.curve_labels,
                                         title=f"{data_name}: mean ± 1 std over seeds")
    else:
        # No run has a finite curve (all missing or diverged at once): the other figures and the
        # report still say what happened.
        print(f"[plot] {data_name}: no learning curves to draw", flush=True)
    written += plots.final_per_arm(runs, paper.metric.name, stems["final"], order=order,
                                   ylabel=f"test {paper.metric.label}",
                                   title=f"{data_name}: seeds and 95% CI")
    written += plots.ours_vs_paper_of_claims(summary, paper, order, stems["ours-vs-paper"],
                                             ours_title=f"ours: {data_name} (test)")
    return written


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.stages.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replication", required=True, help="replications/<name> (its paper.yaml and task)")
    parser.add_argument("--summary", required=True, help="results/<name>/<profile>/<data>/summary.csv")
    parser.add_argument("--out-dir", required=True, help="folder for the figures")
    args = parser.parse_args(argv)
    try:
        written = plot_all(args.replication, args.summary, args.out_dir)
    except ValueError as exc:  # e.g. a summary whose arms paper.yaml does not know
        raise UserError(str(exc)) from None
    print(f"[plot] wrote {len(written)} files to {args.out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
