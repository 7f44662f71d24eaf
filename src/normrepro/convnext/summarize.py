"""Stage `summarize`: final.json of every arm × seed → `summary.csv` and `runs.csv`.

    python -m normrepro.convnext.summarize --out results/convnext/<dataset>/summary.csv \
        --runs results/convnext/<dataset>/bn/seed0 ... [--root results/convnext/<dataset>] \
        [--paper replications/convnext/paper.yaml]

The statistics (per arm: n, mean, std, 95% t-interval of test top-1/top-5; per pair of arms, e.g.
LN - BN, the paired difference with its 95% interval and the Welch one) and the meaning of every
column are those of `normrepro.summary`. The arms' order and the pairs come from paper.yaml
(`arms`, `pairs`, `compare_unlisted_with`; `normrepro.paper`). Diverged or missing runs stay in
both tables with their status instead of being dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normrepro.errors import cli
from normrepro.paper import load_paper
from normrepro.summary import collect_runs, write_summary

METRICS = ("test_top1", "test_top5")  # keys of final.json (normrepro.convnext.evaluate)


def summarize(out: str | Path, runs: list[str] | None = None, root: str | Path | None = None,
              paper: str | Path = "replications/convnext/paper.yaml"):
    out = Path(out)
    root = Path(root) if root else out.parent
    spec = load_paper(paper)
    table = collect_runs(root, METRICS, runs)
    if table.empty:
        raise FileNotFoundError(f"no runs found under {root}; train and evaluate first")
    arms = spec.arm_order(table["arm"])
    return write_summary(table, METRICS, out, pairs=spec.pairs(arms), arm_order=arms)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.convnext.summarize",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="summary.csv to write (runs.csv goes beside it)")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="run folders <root>/<arm>/seed<k> (default: all under --root)")
    parser.add_argument("--root", default=None, help="default: the folder of --out")
    parser.add_argument("--paper", default="replications/convnext/paper.yaml",
                        help="the arms' order and the pairs to compare (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.out, args.runs, args.root, args.paper)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    top1 = summary[summary["metric"] == "test_top1"]
    for row in top1.itertuples():
        print(f"[summarize] {row.name:>8}: test top-1 {row.mean:.2f} ± {row.ci_half:.2f} "
              f"(n={row.n}, {row.status})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
