"""Collect per-run results of a replication and write its summary table.

Generic over replications: a run is a folder `<root>/<arm>/seed<k>/` holding `final.json` (the
evaluation result, with a `status` field) and usually `metrics.csv` (per-epoch curves). This
module turns a set of such folders into

* a per-run table (`runs.csv`): one row per run with its status and final metrics, so a diverged
  or missing run is visible instead of silently dropped;
* a summary table (`summary.csv`): per arm and metric the seed statistics (n, mean, std, 95% CI)
  over the runs that finished, and for each requested pair of arms the per-seed paired
  difference with a paired-t 95% CI (primary: arms share seeds, hence data order and held-out
  split) and, as a secondary column, the difference of means with a Welch 95% CI.

The statistics come from `normrepro.stats`, so both replications report numbers the same way.
`SUMMARY_COLUMNS` documents every column of `summary.csv`; reports print that documentation.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from normrepro import stats
from normrepro.io import atomic_path

# A run that finished training and evaluation; anything else ("diverged", "missing", "failed")
# is counted in the summary but contributes no value to the statistics.
STATUS_OK = "ok"

_SEED_DIR = re.compile(r"^seed(\d+)$")

SUMMARY_COLUMNS: dict[str, str] = {
    "kind": "`arm`: statistics of one arm over its seeds; `diff`: difference between two arms",
    "name": "arm name, or `B - A` for a difference (mean of arm B minus mean of arm A)",
    "metric": "which final metric (a key of each run's final.json)",
    "n": "number of runs that finished (status ok) and contribute a value; for `diff` rows, "
         "the number of seeds finished in both arms (the pairs)",
    "n_runs": "number of runs attempted (all statuses); for `diff` rows, both arms together",
    "n_diverged": "runs stopped because the training loss became NaN/inf",
    "n_missing": "runs without a result (not run yet, crashed, or failed)",
    "divergence_rate": "n_diverged / n_runs: a diverged run counts against its arm",
    "mean": "mean over finished seeds; for `diff` rows, the mean over paired seeds of "
            "B[seed] - A[seed]",
    "std": "sample standard deviation over seeds (ddof=1); for `diff` rows, of the per-seed "
           "differences; empty when n < 2",
    "ci_low": "lower end of the 95% confidence interval (Student t for arms, paired t over the "
              "per-seed differences for diffs)",
    "ci_high": "upper end of the 95% confidence interval",
    "ci_half": "half-width of the 95% confidence interval (the ± in the report)",
    "welch_diff": "`diff` rows only: mean(B) - mean(A) over each arm's finished seeds "
                  "(equals `mean` when every seed finished in both arms)",
    "welch_ci_low": "`diff` rows only: lower end of the Welch 95% interval (arms treated as "
                    "independent samples; secondary)",
    "welch_ci_high": "`diff` rows only: upper end of the Welch 95% interval",
    "welch_ci_half": "`diff` rows only: half-width of the Welch 95% interval",
    "status": "`ok` when every attempted run finished, otherwise what went wrong, e.g. "
              "`1/3 diverged`",
}


def _run_id(run_dir: Path) -> tuple[str, int]:
    match = _SEED_DIR.match(run_dir.name)
    if not match:
        raise ValueError(f"run folder {run_dir} is not named seed<k>; expected <root>/<arm>/seed<k>")
    return run_dir.parent.name, int(match.group(1))


def find_run_dirs(root: str | Path) -> list[Path]:
    """All `<root>/<arm>/seed<k>` folders (sorted), whether or not they have results yet."""
    root = Path(root)
    return sorted(p for p in root.glob("*/seed*") if p.is_dir() and _SEED_DIR.match(p.name))


def _relative_to(path: Path, root: str | Path) -> str:
    """`path` relative to `root` when inside it (tables stay valid if results/ moves)."""
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def resolve_run_dirs(runs: pd.DataFrame, root: str | Path) -> list[Path]:
    """The run folders of a runs table, resolved against the folder the table describes."""
    return [Path(root) / d for d in runs["run_dir"]]


def collect_runs(root: str | Path, metric_keys: Sequence[str],
                 runs: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """One row per run: arm, seed, status, run_dir and the requested metrics from final.json.

    `runs` restricts the table to these run folders (the Makefile passes exactly the arms × seeds
    of the current command, so stale folders from an earlier SEEDS= do not leak in); by default
    every `<root>/<arm>/seed<k>` folder is used. `run_dir` is stored relative to `root` (use
    `resolve_run_dirs`). A run without final.json gets status `missing`;
    metrics of a run whose status is not `ok` are NaN, whatever final.json holds.
    """
    run_dirs = [Path(r) for r in runs] if runs is not None else find_run_dirs(root)
    rows = []
    for run_dir in run_dirs:
        arm, seed = _run_id(run_dir)
        row: dict = {"arm": arm, "seed": seed, "run_dir": _relative_to(run_dir, root)}
        final_path = run_dir / "final.json"
        if final_path.is_file():
            with open(final_path, encoding="utf-8") as fh:
                final = json.load(fh)
            row["status"] = str(final.get("status", STATUS_OK))
            for key in metric_keys:
                value = final.get(key)
                ok = row["status"] == STATUS_OK and isinstance(value, (int, float))
                row[key] = float(value) if ok else math.nan
        else:
            row["status"] = "missing"
            for key in metric_keys:
                row[key] = math.nan
        rows.append(row)
    columns = ["arm", "seed", "status", *metric_keys, "run_dir"]
    return pd.DataFrame(rows, columns=columns).sort_values(["arm", "seed"], kind="stable") \
        .reset_index(drop=True)


def collect_curves(run_dirs: Iterable[str | Path], filename: str = "metrics.csv") -> pd.DataFrame:
    """Concatenate the per-epoch CSVs of several runs, adding `arm` and `seed` columns."""
    frames = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / filename
        if not path.is_file():
            continue
        df = pd.read_csv(path)
        arm, seed = _run_id(run_dir)
        df.insert(0, "seed", seed)
        df.insert(0, "arm", arm)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["arm", "seed"])
    return pd.concat(frames, ignore_index=True)


def _status_text(statuses: pd.Series) -> str:
    n = len(statuses)
    bad = statuses[statuses != STATUS_OK].value_counts()
    if n == 0:
        return "no runs"
    if bad.empty:
        return STATUS_OK
    return ", ".join(f"{count}/{n} {status}" for status, count in sorted(bad.items()))


def _rate(count, total: int) -> float:
    return float(count) / total if total else math.nan


def summarize_runs(runs: pd.DataFrame, metric_keys: Sequence[str],
                   pairs: Sequence[tuple[str, str]] = (),
                   arm_order: Sequence[str] | None = None) -> pd.DataFrame:
    """The summary table (columns `SUMMARY_COLUMNS`) from a `collect_runs` table.

    `pairs` lists (A, B) arm pairs; each adds a `diff` row `B - A` per metric.
    """
    arms = list(arm_order) if arm_order else sorted(runs["arm"].unique())
    unknown = [a for pair in pairs for a in pair if a not in arms]
    if unknown:
        raise ValueError(f"pairs name arms {sorted(set(unknown))} that have no runs; "
                         f"arms present: {arms}")
    rows = []
    for metric in metric_keys:
        for arm in arms:
            sub = runs[runs["arm"] == arm]
            ok = sub[sub["status"] == STATUS_OK][metric]
            s = stats.summarize(ok)
            rows.append({
                "kind": "arm", "name": arm, "metric": metric, "n": s["n"], "n_runs": len(sub),
                "n_diverged": int((sub["status"] == "diverged").sum()),
                "n_missing": int((~sub["status"].isin([STATUS_OK, "diverged"])).sum()),
                "divergence_rate": _rate((sub["status"] == "diverged").sum(), len(sub)),
                "mean": s["mean"], "std": s["std"], "ci_low": s["ci_low"],
                "ci_high": s["ci_high"], "ci_half": s["ci_half"],
                "status": _status_text(sub["status"]),
            })
        for a, b in pairs:
            sa, sb = runs[runs["arm"] == a], runs[runs["arm"] == b]
            oka, okb = sa[sa["status"] == STATUS_OK], sb[sb["status"] == STATUS_OK]
            w = stats.diff_ci(oka[metric], okb[metric])
            p = stats.paired_diff_ci(dict(zip(oka["seed"], oka[metric])),
                                     dict(zip(okb["seed"], okb[metric])))
            both = pd.concat([sa["status"], sb["status"]])
            rows.append({
                "kind": "diff", "name": f"{b} - {a}", "metric": metric,
                "n": p["n"], "n_runs": len(both),
                "n_diverged": int((both == "diverged").sum()),
                "n_missing": int((~both.isin([STATUS_OK, "diverged"])).sum()),
                "divergence_rate": _rate((both == "diverged").sum(), len(both)),
                "mean": p["diff"], "std": p["std"], "ci_low": p["ci_low"],
                "ci_high": p["ci_high"], "ci_half": p["ci_half"],
                "welch_diff": w["diff"], "welch_ci_low": w["ci_low"],
                "welch_ci_high": w["ci_high"], "welch_ci_half": w["ci_half"],
                "status": _status_text(both),
            })
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return Path(path)


def write_summary(runs: pd.DataFrame, metric_keys: Sequence[str], out_csv: str | Path,
                  pairs: Sequence[tuple[str, str]] = (), arm_order: Sequence[str] | None = None,
                  runs_csv: str | Path | None = None) -> pd.DataFrame:
    """Write `summary.csv` (and the per-run table, by default `runs.csv` beside it) atomically."""
    out_csv = Path(out_csv)
    summary = summarize_runs(runs, metric_keys, pairs, arm_order)
    _write_csv(runs, runs_csv if runs_csv is not None else out_csv.with_name("runs.csv"))
    _write_csv(summary, out_csv)
    return summary


def read_summary(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the summarize stage first")
    return pd.read_csv(path)


def _parse_pair(text: str) -> tuple[str, str]:
    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"--pair {text!r} must look like A:B (reports B - A)")
    return parts[0], parts[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normrepro.summary",
        description="Summarize <root>/<arm>/seed<k>/final.json into summary.csv and runs.csv.")
    parser.add_argument("--root", required=True, help="folder holding <arm>/seed<k>/ runs")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="restrict to these run folders (default: every <root>/*/seed*)")
    parser.add_argument("--metrics", nargs="+", required=True, help="keys of final.json")
    parser.add_argument("--pair", action="append", type=_parse_pair, default=[],
                        metavar="A:B", help="add the difference B - A (repeatable)")
    parser.add_argument("--out", required=True, help="summary CSV to write")
    args = parser.parse_args(argv)
    runs = collect_runs(args.root, args.metrics, args.runs)
    if runs.empty:
        print(f"error: no runs found under {args.root}", file=sys.stderr)
        return 2
    try:
        write_summary(runs, args.metrics, args.out, args.pair)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
