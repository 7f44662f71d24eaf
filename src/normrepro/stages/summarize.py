"""Stage `summarize`: every run's final.json -> `summary.csv` and `runs.csv` of one data folder.

    python -m normrepro.stages.summarize --replication replications/<name> \\
        --out results/<name>/<profile>/<data>/summary.csv [--runs RUN ...] [--root DIR]

The same for every replication. The metrics are the task's (`SPEC.summary_metrics` of
`normrepro.tasks.<task>`, the task named by the replication's base.yaml; the paper's metric
first); the arms' order and the pairs compared come from the replication's paper.yaml (`arms`,
`pairs`, `compare_unlisted_with`; `normrepro.paper`). Per arm: n, mean, std and the 95 %
t-interval over seeds; per pair: the paired difference over shared seeds with its 95 % interval
and the Welch one (`normrepro.summary`, whose `SUMMARY_COLUMNS` documents every column).
Diverged and missing runs stay in both tables with their status instead of being dropped.
`--runs` (make passes the arms x seeds of the command) keeps folders of an earlier SEEDS= out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normrepro.errors import UserError, cli
from normrepro.paper import load_paper
from normrepro.stages._task import replication_task, spec
from normrepro.summary import collect_runs, find_run_dirs, write_summary


def summarize(replication: str | Path, out: str | Path, runs: list[str] | None = None,
              root: str | Path | None = None):
    out = Path(out)
    root = Path(root) if root else out.parent
    task_spec = spec(replication_task(replication))
    paper = load_paper(Path(replication) / "paper.yaml")
    run_dirs = [Path(r) for r in runs] if runs else find_run_dirs(root)  # not *.replaced-*
    metrics = task_spec.summary_metrics(run_dirs)
    table = collect_runs(root, metrics, run_dirs)
    if table.empty:
        raise UserError(f"no runs found under {root}; train and evaluate first (make does)")
    arms = paper.arm_order(table["arm"])
    return write_summary(table, metrics, out, pairs=paper.pairs(arms), arm_order=arms), paper


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.stages.summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replication", required=True, help="replications/<name> (its paper.yaml and task)")
    parser.add_argument("--out", required=True, help="summary.csv to write (runs.csv goes beside it)")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="run folders <root>/<arm>/seed<k> (default: all under --root)")
    parser.add_argument("--root", default=None, help="default: the folder of --out")
    args = parser.parse_args(argv)
    try:
        summary, paper = summarize(args.replication, args.out, args.runs, args.root)
    except ValueError as exc:  # e.g. a pair naming an arm twice
        raise UserError(str(exc)) from None
    main_metric = summary[summary["metric"] == paper.metric.name]
    for row in main_metric[main_metric["kind"] == "arm"].itertuples():
        print(f"[summarize] {row.name:>10}: test {paper.metric.label} {row.mean:.2f} ± {row.ci_half:.2f} "
              f"(n={row.n}, {row.status})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
