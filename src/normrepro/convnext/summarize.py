"""Stage `summarize`: final.json of every arm × seed → `summary.csv` and `runs.csv`.

    python -m normrepro.convnext.summarize --out results/convnext/<dataset>/summary.csv \
        --runs results/convnext/<dataset>/bn/seed0 ... [--root results/convnext/<dataset>]

The statistics (per arm: n, mean, std, 95% t-interval of test top-1/top-5; every arm minus BN, e.g. LN - BN, with a
Welch 95% interval) and the meaning of every column are those of `normrepro.summary`. Diverged or
missing runs stay in both tables with their status instead of being dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normrepro.summary import collect_runs, write_summary

METRICS = ("test_top1", "test_top5")
ARM_ORDER = ("bn", "bn_sync", "ln")
BASELINE = "bn"  # every other arm is compared with it: "ln - bn" is the effect of the swap


def summarize(out: str | Path, runs: list[str] | None = None, root: str | Path | None = None):
    out = Path(out)
    root = Path(root) if root else out.parent
    table = collect_runs(root, METRICS, runs)
    if table.empty:
        raise FileNotFoundError(f"no runs found under {root}; train and evaluate first")
    arms = [a for a in ARM_ORDER if a in set(table["arm"])]
    arms += sorted(set(table["arm"]) - set(arms))
    pairs = [(BASELINE, arm) for arm in arms if arm != BASELINE] if BASELINE in arms else []
    return write_summary(table, METRICS, out, pairs=pairs, arm_order=arms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.convnext.summarize",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="summary.csv to write (runs.csv goes beside it)")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="run folders <root>/<arm>/seed<k> (default: all under --root)")
    parser.add_argument("--root", default=None, help="default: the folder of --out")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.out, args.runs, args.root)
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
