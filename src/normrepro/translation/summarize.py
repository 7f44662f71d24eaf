"""Stage `summarize`: every run's final.json → `summary.csv` and `runs.csv` of one dataset.

    python -m normrepro.translation.summarize --out results/powernorm/<profile>/<data>/summary.csv \\
        --runs results/powernorm/<profile>/<data>/ln/seed1 ... [--root results/powernorm/<profile>/<data>] \\
        [--paper replications/powernorm/paper.yaml]

Metrics (keys of final.json): `test_bleu_tok` (the paper's tokenized BLEU), `test_bleu_sacre`,
the same on every out-of-domain set present (`ding_bleu_tok`, ...), all of the primary
evaluation (running statistics recomputed for the averaged weights), then, when the runs have
them, `test_avgstats_bleu_tok` and `test_avgstats_bleu_sacre`: the test set with the averaged
running statistics (secondary; see `normrepro.translation.evaluate`). Per arm: n, mean, std,
95% t-interval over seeds; per pair: the difference of means with a Welch 95% interval
(`normrepro.summary`, whose `SUMMARY_COLUMNS` documents each column). The arms' order and the
pairs come from paper.yaml (`arms`, `pairs`, and `compare_unlisted_with` for the arms it does not
list; `normrepro.paper`). Diverged runs stay in both tables with their status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from normrepro.errors import cli
from normrepro.paper import load_paper
from normrepro.summary import collect_runs, find_run_dirs, write_summary

BASE_METRICS = ("test_bleu_tok", "test_bleu_sacre")
AVGSTATS_METRICS = ("test_avgstats_bleu_tok", "test_avgstats_bleu_sacre")


def metric_keys(run_dirs: list[Path]) -> list[str]:
    """Test metrics, `<set>_bleu_*` of every out-of-domain set some run was scored on, then the
    averaged-statistics test metrics if some run has them."""
    sets, avgstats = [], False
    for run in run_dirs:
        final = Path(run) / "final.json"
        if final.is_file():
            data = json.loads(final.read_text(encoding="utf-8"))
            for k in data:
                if k in AVGSTATS_METRICS:
                    avgstats = True
                elif k.endswith("_bleu_tok") and k != "test_bleu_tok" and k[: -len("_bleu_tok")] not in sets:
                    sets.append(k[: -len("_bleu_tok")])
    return (list(BASE_METRICS) + [f"{s}_{m}" for s in sorted(sets) for m in ("bleu_tok", "bleu_sacre")]
            + (list(AVGSTATS_METRICS) if avgstats else []))


def summarize(out: str | Path, runs: list[str] | None = None, root: str | Path | None = None,
              paper: str | Path = "replications/powernorm/paper.yaml"):
    out = Path(out)
    root = Path(root) if root else out.parent
    spec = load_paper(paper)
    run_dirs = [Path(r) for r in runs] if runs else find_run_dirs(root)  # not *.replaced-*
    keys = metric_keys(run_dirs)
    table = collect_runs(root, keys, run_dirs)
    if table.empty:
        raise FileNotFoundError(f"no runs found under {root}; train and evaluate first")
    arms = spec.arm_order(table["arm"])
    return write_summary(table, keys, out, pairs=spec.pairs(arms), arm_order=arms)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.translation.summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="summary.csv to write (runs.csv goes beside it)")
    parser.add_argument("--runs", nargs="*", default=None, help="run folders <root>/<arm>/seed<k>")
    parser.add_argument("--root", default=None, help="default: the folder of --out")
    parser.add_argument("--paper", default="replications/powernorm/paper.yaml",
                        help="the arms' order and the pairs to compare (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.out, args.runs, args.root, args.paper)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in summary[summary["metric"] == "test_bleu_tok"].itertuples():
        print(f"[summarize] {row.kind:>4} {row.name:>10}: test tokenized BLEU {row.mean:.2f} ± "
              f"{row.ci_half:.2f} (n={row.n}, {row.status})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
