"""Stage `report`: `results/<name>/<profile>/report.md`, from the files the pipeline wrote and the
replication's paper.yaml.

    python -m normrepro.stages.report --replication replications/<name> \\
        --results results/<name>/<profile> [--datasets D ...] [--figures DIR] [--out FILE] \\
        [--bench FILE] [--crosscheck FILE]

The same command for every replication; the task (the replication's base.yaml) writes the
sections that differ between tasks (`normrepro.tasks.<task>.report.build_report`). Every number
in a report is read from a file: the paper's from paper.yaml, ours from each data folder's
summary.csv and runs.csv and each run's files. One section per data folder (default: every
`<results>/<data>/summary.csv`). `--bench` and `--crosscheck` are extra inputs a task may read
(its `SPEC.report_extras`; given to a task that has none, they are an error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normrepro import report as rp
from normrepro.errors import UserError, cli
from normrepro.stages._task import replication_task, spec, task_module


def report(replication: str | Path, results: str | Path, datasets: list[str] | None = None,
           figures: str | Path | None = None, out: str | Path | None = None,
           **extras: str | Path | None) -> Path:
    replication, results = Path(replication), Path(results)
    task = replication_task(replication)
    given = {k: Path(v) for k, v in extras.items() if v is not None}
    unknown = sorted(set(given) - set(spec(task).report_extras))
    if unknown:
        raise UserError(f"the {task} report reads no {', '.join('--' + k for k in unknown)}; "
                        f"leave it out")
    datasets = datasets or sorted(p.parent.name for p in results.glob("*/summary.csv"))
    if not datasets:
        raise UserError(f"no {results}/<data>/summary.csv found; run the summarize stage first "
                        "(make does)")
    out = Path(out) if out else results / "report.md"
    figures = Path(figures) if figures else results / "figures"
    try:
        text = task_module(task, "report").build_report(results, datasets, replication / "paper.yaml",
                                                        out, figures, **given)
    except (FileNotFoundError, KeyError) as exc:  # a run's file is missing or lacks a field
        raise UserError(f"cannot build {out}: {exc}; rerun the stages before the report "
                        "(make does)") from None
    rp.write_report(out, text)
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.stages.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replication", required=True, help="replications/<name> (its paper.yaml and task)")
    parser.add_argument("--results", required=True, help="results/<name>/<profile>")
    parser.add_argument("--datasets", nargs="*", default=None,
                        help="data folders to report (default: every one with a summary.csv)")
    parser.add_argument("--figures", default=None, help="default: RESULTS/figures")
    parser.add_argument("--out", default=None, help="default: RESULTS/report.md")
    parser.add_argument("--bench", default=None, help="a bench JSON the task's report shows")
    parser.add_argument("--crosscheck", default=None, help="a cross-check JSON the task's report shows")
    args = parser.parse_args(argv)
    out = report(args.replication, args.results, args.datasets, args.figures, args.out,
                 bench=args.bench, crosscheck=args.crosscheck)
    print(f"[report] wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
