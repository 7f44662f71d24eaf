"""Goal `sweep` of every replication: each arm's learning rate, chosen on held-out data; and a
longer-training check.

    python -m normrepro.sweep settings REPL --profile P lrs|seed|arms|check_factor [--arm A]
    python -m normrepro.sweep resolve REPL --profile P --arm A --lr LR --out RUN/config.yaml
    python -m normrepro.sweep grid --sweep-dir DIR --runs DIR/<arm>/lr<lr> ...
    python -m normrepro.sweep resolve-check REPL --profile P --arm A --grid DIR/grid.csv \
        --out DIR/<arm>/check/config.yaml
    python -m normrepro.sweep finish --sweep-dir DIR --runs ... --arms A B

The grid: for every arm of `sweep.arms` (default: the profile's arms), one training run (seed
`sweep.seed`) per learning rate of `sweep.lrs` (absolute peak lr; the profile's schedule, data and
model otherwise unchanged). A run is scored on held-out data only, by its task's score
(`SweepSpec` of `normrepro.tasks.<task>.SPEC`, read from the last metrics.csv row that has it):

* image classification: held-out top-1 (%) after the last epoch (`val_top1`, higher is better;
  the held-out images are carved out of the training split, the test split is never read);
* translation: the validation set's cross-entropy in bits per target token without label
  smoothing at the last update (`val_nll_loss`, lower is better; the validation verses are their
  own split, never the test set).

The chosen lr of an arm is the one with the best score (a tie goes to the smaller lr); a diverged
run never wins.

The check: each arm once more at its chosen lr with `sweep.check_epochs_factor` x the training
length (epochs for image classification, `trainer.max_updates` for translation; 1.5 by default),
to measure whether training longer would still change the answer. Its gain is score (check) -
score (grid run at the chosen lr, same seed), in the score's units.

Writes into the sweep folder (results/<replication>/<profile>/<data>/sweep/):
  <arm>/lr<lr>/           the grid's runs (config.yaml, metrics.csv, the done-marker, checkpoints/)
  <arm>/check/            the longer run of each arm
  grid.csv                one row per grid run (`grid_columns`)
  summary.csv             one row per arm: chosen lr, its score, the check's gain (`summary_columns`)
  figures/sweep.{png,pdf} score vs lr per arm, the chosen lr and the check marked

The chosen values are NOT written into the profile by this goal: a person copies them into
`arm_overrides.<arm>.optim.lr` of the profile, with a comment quoting summary.csv, so that the
default `make replicate-<name>` never reruns the sweep (and a sweep on another machine cannot
silently change a finished replication's config).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

from normrepro.config import ConfigError, dump, load_profile, resolve
from normrepro.errors import UserError
from normrepro.io import read_json, write_if_changed
from normrepro.summary import _write_csv
from normrepro.tasks import SweepSpec


def grid_columns(spec: SweepSpec) -> dict[str, str]:
    return {
        "arm": "arm name",
        "lr": "absolute peak learning rate of the run",
        "status": "`ok`, `diverged` (training loss became NaN/inf) or `missing` (not trained yet)",
        spec.length_name: f"{spec.length_name} completed",
        spec.score: f"{spec.score_label}: the score",
        **{c: f"metrics.csv `{c}` at the last row that has it" for c in spec.extra},
        "train_time_s": "training wall time of the run (s)",
        "chosen": "true for the arm's best score",
        "run_dir": "the run's folder, relative to the sweep folder",
    }


def summary_columns(spec: SweepSpec) -> dict[str, str]:
    s, n = spec.score, spec.length_name
    return {
        "arm": "arm name",
        "chosen_lr": "the lr with the best score in the grid (a tie goes to the smaller lr)",
        "chosen_at_edge": "true when chosen_lr is the grid's smallest or largest lr: the best lr may "
                          "lie outside the grid (compare the runner-up before extending it)",
        s: f"{spec.score_label} of the grid run at the chosen lr",
        "runner_up_lr": "the second-best lr of the grid",
        f"runner_up_{s}": "its score",
        f"check_{n}": f"{n} of the longer check run (chosen lr, same seed)",
        f"check_{s}": "score of the check run",
        "check_gain": f"check_{s} - {s}: what training longer still changes "
                      f"({'higher' if spec.higher_is_better else 'lower'} is better)",
        "check_status": "status of the check run",
    }


_LR_DIR = re.compile(r"^lr(.+)$")


def task_sweep_spec(task: str) -> SweepSpec:
    from normrepro.stages._task import spec

    sw = spec(task).sweep
    if sw is None:
        raise ConfigError(f"task {task!r} has no learning-rate sweep")
    return sw


def _lr_list(value, where: str) -> list[float]:
    try:
        lrs = [float(v) for v in value]
    except (TypeError, ValueError):
        lrs = []
    if len(lrs) < 2 or any(not (v > 0 and math.isfinite(v)) for v in lrs):
        raise ConfigError(f"{where}={value!r}: give at least two positive learning rates")
    return lrs


def sweep_settings(profile_cfg: dict) -> dict:
    """The profile's `sweep` mapping, checked: lrs (>= 2 positive numbers), seed, check factor.

    `sweep.lrs` is either one list for every arm or a mapping arm -> list (each arm's grid
    centred on its own optimum); `lrs` in the result is always the mapping, over `arms`."""
    sw = profile_cfg.get("sweep")
    if not isinstance(sw, dict) or not sw.get("lrs"):
        raise ConfigError(f"profile {profile_cfg.get('profile')!r} has no `sweep.lrs`; add "
                          "`sweep: {lrs: [...]}` to its profile file to sweep it")
    arms = list(sw.get("arms") or profile_cfg.get("arms") or [])
    if isinstance(sw["lrs"], dict):
        missing = [a for a in arms if a not in sw["lrs"]]
        if missing:
            raise ConfigError(f"sweep.lrs has no grid for arm(s) {', '.join(missing)}; add "
                              f"`sweep.lrs.<arm>: [...]` (it has: {', '.join(sw['lrs'])})")
        lrs = {a: _lr_list(sw["lrs"][a], f"sweep.lrs.{a}") for a in arms}
    else:
        grid = _lr_list(sw["lrs"], "sweep.lrs")
        lrs = {a: grid for a in arms}
    factor = float(sw.get("check_epochs_factor", 1.5))
    if factor <= 1:
        raise ConfigError(f"sweep.check_epochs_factor={factor}: must be > 1")
    return {"lrs": lrs, "seed": int(sw.get("seed", 0)), "check_epochs_factor": factor,
            "arms": arms}


def check_length(length: int, factor: float) -> int:
    """Length of the check run: at least `factor` x the schedule's (rounded up, so that 7 x 1.5
    trains 11 epochs, not Python's round-half-even 10)."""
    return int(math.ceil(length * factor - 1e-9))


check_epochs = check_length  # the image-classification name


def resolve_grid_run(repl: str | Path, profile: str, arm: str, lr: float,
                     overrides: list[str] = ()) -> dict:
    """A grid run's config: the profile's run config of `arm`, seed `sweep.seed`, lr = `lr`.

    The lr is applied after the profile's own `arm_overrides` (which hold the chosen values), so
    the sweep always trains at the grid value.
    """
    settings = sweep_settings(load_profile(repl, profile, overrides))
    cfg = resolve(repl, profile, arm, settings["seed"], [*overrides, f"optim.lr={lr!r}"])
    task_sweep_spec(cfg["task"])
    cfg.pop("sweep", None)
    cfg["sweep_role"] = "grid"
    return cfg


def _last_values(run_dir: Path, columns: list[str]) -> dict:
    """Each column's value at the last metrics.csv row where it is finite (NaN if none)."""
    path = run_dir / "metrics.csv"
    out = {c: math.nan for c in columns}
    if not path.is_file():
        return out
    df = pd.read_csv(path)
    for c in columns:
        if c in df:
            values = pd.to_numeric(df[c], errors="coerce").dropna()
            if len(values):
                out[c] = float(values.iloc[-1])
    return out


def _run_spec(run_dir: Path) -> SweepSpec:
    from normrepro.stages._task import run_task

    return task_sweep_spec(run_task(run_dir))


def _done_marker(run_dir: Path) -> str:
    from normrepro.stages._task import run_task, spec

    return spec(run_task(run_dir)).done_marker


def _run_row(run_dir: Path, root: Path, sw: SweepSpec) -> dict:
    row = {"run_dir": run_dir.relative_to(root).as_posix()}
    done = run_dir / _done_marker(run_dir)
    values = _last_values(run_dir, [sw.score, *sw.extra])
    if done.is_file():
        record = read_json(done)
        if sw.done_section:
            record = record.get(sw.done_section, {})
        row["status"] = record.get("status", "ok")
        row["train_time_s"] = record.get(sw.done_time, math.nan)
        row[sw.length_name] = record.get(sw.done_length, 0)
    else:
        row.update({"status": "missing", "train_time_s": math.nan, sw.length_name: 0})
    for key, value in values.items():
        row[key] = value if row["status"] == "ok" else math.nan
    return row


def grid_table(sweep_dir: str | Path, runs: list[str | Path]) -> pd.DataFrame:
    """One row per grid run (`grid_columns`), the best score of each arm marked chosen."""
    sweep_dir = Path(sweep_dir)
    runs = list(map(Path, runs))
    if not runs:
        raise FileNotFoundError(f"no grid runs given for {sweep_dir}")
    sw = _run_spec(runs[0])
    rows = []
    for run in runs:
        match = _LR_DIR.match(run.name)
        if not match:
            raise ValueError(f"grid run folder {run} is not named lr<value>")
        rows.append({"arm": run.parent.name, "lr": float(match.group(1)),
                     **_run_row(run, sweep_dir, sw)})
    df = pd.DataFrame(rows)
    df = df.sort_values(["arm", "lr"], kind="stable").reset_index(drop=True)
    df["chosen"] = False
    for _arm, sub in df.groupby("arm", sort=False):
        scores = sub[sw.score].where(sub["status"] == "ok")
        if scores.notna().any():  # a tie goes to the smaller lr (the first row)
            df.loc[scores.idxmax() if sw.higher_is_better else scores.idxmin(), "chosen"] = True
    return df[list(grid_columns(sw))]


def chosen_lr(grid_csv: str | Path, arm: str) -> float:
    df = pd.read_csv(grid_csv)
    sub = df[(df["arm"] == arm) & (df["chosen"].astype(bool))]
    if sub.empty:
        raise ConfigError(f"{grid_csv}: arm {arm!r} has no finished grid run to choose from; "
                          "run `make sweep-<replication>` to train the grid first")
    return float(sub["lr"].iloc[0])


def resolve_check_run(repl: str | Path, profile: str, arm: str, grid_csv: str | Path,
                      overrides: list[str] = ()) -> dict:
    """The check run: the arm at its chosen lr, sweep.seed, length x sweep.check_epochs_factor."""
    settings = sweep_settings(load_profile(repl, profile, overrides))
    lr = chosen_lr(grid_csv, arm)
    cfg = resolve(repl, profile, arm, settings["seed"], [*overrides, f"optim.lr={lr!r}"])
    sw = task_sweep_spec(cfg["task"])
    length = cfg["trainer"].get(sw.length_key)
    if length is None:
        raise ConfigError(f"the sweep's check multiplies trainer.{sw.length_key}, which profile "
                          f"{profile!r} leaves null; set it in the profile")
    cfg["trainer"][sw.length_key] = check_length(int(length), settings["check_epochs_factor"])
    cfg.pop("sweep", None)
    cfg["sweep_role"] = "check"
    return cfg


def sweep_summary(grid: pd.DataFrame, sweep_dir: Path, arms: list[str], sw: SweepSpec) -> pd.DataFrame:
    s, n = sw.score, sw.length_name
    rows = []
    for arm in arms:
        arm_lrs = grid.loc[grid["arm"] == arm, "lr"]
        ok = grid[(grid["arm"] == arm) & (grid["status"] == "ok")]
        chosen = ok[ok["chosen"].astype(bool)]
        best = chosen.iloc[0] if len(chosen) else None
        rest = ok.drop(chosen.index[:1]).sort_values([s, "lr"], ascending=[not sw.higher_is_better, True],
                                                      kind="stable")
        second = rest.iloc[0] if len(rest) else None
        check_dir = sweep_dir / arm / "check"
        check = _run_row(check_dir, sweep_dir, sw) if (check_dir / "config.yaml").is_file() \
            else {"status": "missing"}
        check_score = check.get(s, math.nan)
        base = float(best[s]) if best is not None else math.nan
        rows.append({
            "arm": arm,
            "chosen_lr": float(best["lr"]) if best is not None else math.nan,
            "chosen_at_edge": best is not None and len(arm_lrs) > 1 and float(best["lr"]) in (
                float(arm_lrs.min()), float(arm_lrs.max())),
            s: base,
            "runner_up_lr": float(second["lr"]) if second is not None else math.nan,
            f"runner_up_{s}": float(second[s]) if second is not None else math.nan,
            f"check_{n}": check.get(n, 0),
            f"check_{s}": check_score,
            "check_gain": check_score - base,
            "check_status": check.get("status", "missing"),
        })
    return pd.DataFrame(rows, columns=list(summary_columns(sw)))


def sweep_figure(grid: pd.DataFrame, summary: pd.DataFrame, out_stem: Path, sw: SweepSpec) -> list[Path]:
    """Score vs lr (log axis), one line per arm; chosen lr ringed, check run as a star."""
    from normrepro import plots

    plt = plots.plt
    s, n = sw.score, sw.length_name
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, (arm, sub) in enumerate(grid.groupby("arm", sort=True)):
        color = f"C{i}"
        sub = sub.sort_values("lr")
        ax.plot(sub["lr"], sub[s], "o-", color=color, label=arm)
        for lr in sub.loc[sub["status"] != "ok", "lr"]:
            ax.axvline(lr, color=color, ls=":", lw=1)
        row = summary[summary["arm"] == arm]
        if len(row) and math.isfinite(float(row["chosen_lr"].iloc[0])):
            lr, score = float(row["chosen_lr"].iloc[0]), float(row[s].iloc[0])
            ax.plot([lr], [score], "o", ms=13, mfc="none", mec=color)
            check = float(row[f"check_{s}"].iloc[0])
            if math.isfinite(check):
                ax.plot([lr], [check], "*", ms=11, color=color,
                        label=f"{arm}: {int(row[f'check_{n}'].iloc[0])} {n} at chosen lr")
    ax.set_xscale("log")
    lrs = sorted(set(float(v) for v in grid["lr"]))
    ax.set_xticks(lrs, [f"{v:g}" for v in lrs])  # the grid's values, no crowded minor labels
    ax.minorticks_off()
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(sw.score_label)
    ax.set_title("learning-rate sweep (one seed; held-out data, never test)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: no point hidden
    fig.tight_layout()
    return plots.save_figure(fig, out_stem)


def finish(sweep_dir: str | Path, runs: list[str | Path], arms: list[str]) -> pd.DataFrame:
    """grid.csv, summary.csv and the figure of a sweep folder."""
    sweep_dir = Path(sweep_dir)
    grid = grid_table(sweep_dir, runs)
    _write_csv(grid, sweep_dir / "grid.csv")
    sw = _run_spec(Path(runs[0]))
    summary = sweep_summary(grid, sweep_dir, arms, sw)
    _write_csv(summary, sweep_dir / "summary.csv")
    sweep_figure(grid, summary, sweep_dir / "figures" / "sweep", sw)
    return summary


def read_summary(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, SweepSpec] | None:
    """grid.csv, summary.csv of a finished sweep and its task's SweepSpec (None if unfinished)."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "summary.csv").is_file() or not (sweep_dir / "grid.csv").is_file():
        return None
    grid = pd.read_csv(sweep_dir / "grid.csv")
    run = sweep_dir / str(grid["run_dir"].iloc[0]) if len(grid) else None
    if run is None or not (run / "config.yaml").is_file():
        return None
    return grid, pd.read_csv(sweep_dir / "summary.csv"), _run_spec(run)


def report_lines(sweep_dir: str | Path, report_path: str | Path, arm_lrs: dict[str, float],
                 digits: int = 3) -> list[str]:
    """A report's section on the sweep behind the arms' lrs (any task): the grid's scores, the
    check runs, chosen lrs on a grid's edge, and runs that did not use the sweep's choice.
    `arm_lrs`: the lr each arm's runs used. Empty when no sweep has finished."""
    from normrepro import report as rp

    found = read_summary(sweep_dir)
    if found is None:
        return []
    grid, summary, sw = found
    s, n = sw.score, sw.length_name
    better = "higher" if sw.higher_is_better else "lower"
    arms = list(summary["arm"])
    rows = []
    for lr in sorted(set(grid["lr"])):
        row = {"lr": f"{lr:g}"}
        for arm in arms:
            cell = grid[(grid["arm"] == arm) & (grid["lr"] == lr)]
            if cell.empty:
                row[arm] = ""
                continue
            r = cell.iloc[0]
            text = rp.fmt_num(r[s], digits) if r["status"] == "ok" else str(r["status"])
            row[arm] = f"**{text}**" if bool(r["chosen"]) else text
        rows.append(row)
    lines = [f"### Learning-rate sweep ({sw.score_label}; {better} is better)", "",
             f"One seed per lr, held-out data only (never the test set); bold: each arm's choice. "
             f"`{Path(sweep_dir).as_posix()}/grid.csv`, `summary.csv`.", "", rp.markdown_table(rows), ""]
    check_rows, notes = [], []
    for r in summary.to_dict("records"):
        check_rows.append({"arm": r["arm"], "chosen lr": f"{r['chosen_lr']:g}", s: rp.fmt_num(r[s], digits),
                           f"check ({r[f'check_{n}']} {n})": rp.fmt_num(r[f"check_{s}"], digits)
                           if r["check_status"] == "ok" else r["check_status"],
                           "gain": rp.fmt_signed(r["check_gain"], digits)})
        if bool(r["chosen_at_edge"]):
            notes.append(f"{r['arm']}: the chosen lr {r['chosen_lr']:g} is on the grid's edge, so its best "
                         "lr may lie outside the grid")
        used = arm_lrs.get(r["arm"])
        if used is not None and math.isfinite(float(r["chosen_lr"])) and \
                not math.isclose(float(used), float(r["chosen_lr"]), rel_tol=1e-9):
            notes.append(f"**{r['arm']}: the runs used lr {used:g}, the sweep chose {r['chosen_lr']:g}**")
    lines += [f"Does training longer change the answer? Each arm once more at its chosen lr with "
              f"{'/'.join(sorted({str(v) for v in summary[f'check_{n}']}))} {n} (same seed):", "",
              rp.markdown_table(check_rows), ""]
    lines += [f"- {x}" for x in notes] + ([""] if notes else [])
    png = Path(sweep_dir) / "figures" / "sweep.png"
    if png.is_file():
        lines += [rp.figure_line(png, report_path, "learning-rate sweep"), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("settings", help="print `lrs`, `seed`, `arms` or `check_epochs_factor`")
    p.add_argument("repl")
    p.add_argument("--profile", required=True)
    p.add_argument("key", choices=("lrs", "seed", "arms", "check_epochs_factor"))
    p.add_argument("--arm", help="with `lrs`: that arm's grid (default: every arm's values)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("resolve", help="write a grid run's config (only if it changed)")
    p.add_argument("repl")
    p.add_argument("--profile", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("grid", help="write grid.csv (the chosen lr per arm)")
    p.add_argument("--sweep-dir", required=True)
    p.add_argument("--runs", nargs="+", required=True)
    p = sub.add_parser("resolve-check", help="write an arm's check-run config from grid.csv")
    p.add_argument("repl")
    p.add_argument("--profile", required=True)
    p.add_argument("--arm", required=True)
    p.add_argument("--grid", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("finish", help="write grid.csv, summary.csv and the figure")
    p.add_argument("--sweep-dir", required=True)
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--arms", nargs="+", required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "settings":
            prof = load_profile(args.repl, args.profile, args.set)
            if args.key == "lrs" and args.arm is not None:  # (any arm: ARMS= may name others)
                sw = prof.get("sweep") if isinstance(prof.get("sweep"), dict) else {}
                prof = {**prof, "sweep": {**sw, "arms": [args.arm]}}
            value = sweep_settings(prof)[args.key]
            if args.key == "lrs":
                value = sorted({v for grid in value.values() for v in grid})
            print(" ".join(map(repr, value)) if args.key == "lrs" else
                  " ".join(map(str, value)) if isinstance(value, list) else value)
        elif args.cmd == "resolve":
            write_if_changed(args.out, dump(resolve_grid_run(args.repl, args.profile, args.arm,
                                                             args.lr, args.set)))
        elif args.cmd == "grid":
            grid = grid_table(args.sweep_dir, args.runs)
            _write_csv(grid, Path(args.sweep_dir) / "grid.csv")
        elif args.cmd == "resolve-check":
            write_if_changed(args.out, dump(resolve_check_run(args.repl, args.profile, args.arm,
                                                              args.grid, args.set)))
        else:
            summary = finish(args.sweep_dir, args.runs, args.arms)
            sw = _run_spec(Path(args.runs[0]))
            s, n = sw.score, sw.length_name
            for row in summary.to_dict("records"):
                print(f"[sweep] {row['arm']}: chosen lr {row['chosen_lr']:g} ({s} "
                      f"{row[s]:.4g}); {row[f'check_{n}']} {n}: {row[f'check_{s}']:.4g} "
                      f"({row['check_gain']:+.3g})"
                      + ("; the chosen lr is on the grid's edge" if row["chosen_at_edge"] else ""),
                      flush=True)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
