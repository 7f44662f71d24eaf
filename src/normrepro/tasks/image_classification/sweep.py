"""Stage `sweep`: each arm's learning rate, chosen on held-out data; and a longer-training check.

    python -m normrepro.tasks.image_classification.sweep resolve REPL --profile P --arm A --lr LR --out RUN/config.yaml
    python -m normrepro.tasks.image_classification.sweep grid --sweep-dir DIR --runs DIR/<arm>/lr<lr> ... --profile-file F
    python -m normrepro.tasks.image_classification.sweep resolve-check REPL --profile P --arm A --grid DIR/grid.csv \
        --out DIR/<arm>/check/config.yaml
    python -m normrepro.tasks.image_classification.sweep finish --sweep-dir DIR --arms A B

The grid: for every arm of `sweep.arms`, one training run (seed `sweep.seed`) per learning rate of
`sweep.lrs` (absolute peak lr; the profile's schedule, epochs and data otherwise unchanged). A run
is scored by its held-out top-1 after the last epoch (`val_top1` of the last metrics.csv row):
the held-out images are carved out of the training split (`data.val_size`, `data.split_seed`),
and the test split is never read by the sweep. The chosen lr of an arm is the one with the best
held-out top-1; a diverged run scores -inf.

The check: each arm once more at its chosen lr with `sweep.check_epochs_factor` x the epochs
(1.5 by default), to measure whether training longer would still change the answer. Its gain is
held-out top-1 (check) - held-out top-1 (grid run at the chosen lr, same seed).

Writes into the sweep folder (results/convnext/<profile>/<dataset>/sweep/):
  <arm>/lr<lr>/          the grid's runs (config.yaml, metrics.csv, env.json, checkpoints/)
  <arm>/check/           the longer run of each arm
  grid.csv               one row per grid run (columns: GRID_COLUMNS)
  summary.csv            one row per arm: chosen lr, its held-out top-1, the check's gain
  figures/sweep.{png,pdf} held-out top-1 vs lr per arm, the chosen lr and the check marked

The chosen values are NOT written into the profile by this stage: a person copies them into
`arm_overrides.<arm>.optim.lr` of the profile, with a comment quoting summary.csv, so that the
default `make replicate-convnext` never reruns the sweep (and a sweep on another machine cannot
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
from normrepro.io import read_json, write_if_changed
from normrepro.summary import _write_csv

GRID_COLUMNS = {
    "arm": "arm name",
    "lr": "absolute peak learning rate of the run (after warm-up, before the cosine decay)",
    "status": "`ok`, `diverged` (training loss became NaN/inf) or `missing` (not trained yet)",
    "epochs": "epochs completed",
    "val_top1": "held-out top-1 (%) after the last epoch: the score",
    "val_loss": "held-out cross-entropy after the last epoch",
    "train_loss": "mean training loss of the last epoch",
    "train_time_s": "training wall time of the run (s)",
    "chosen": "true for the arm's best held-out top-1",
    "run_dir": "the run's folder, relative to the sweep folder",
}
SUMMARY_COLUMNS = {
    "arm": "arm name",
    "chosen_lr": "the lr with the best held-out top-1 in the grid (a tie goes to the smaller lr)",
    "chosen_at_edge": "true when chosen_lr is the grid's smallest or largest lr: the best lr may "
                      "lie outside the grid (compare the runner-up before extending it)",
    "val_top1": "held-out top-1 (%) of the grid run at the chosen lr",
    "runner_up_lr": "the second-best lr of the grid",
    "runner_up_val_top1": "its held-out top-1 (%)",
    "check_epochs": "epochs of the longer check run (chosen lr, same seed)",
    "check_val_top1": "held-out top-1 (%) of the check run",
    "check_gain": "check_val_top1 - val_top1: what training longer still changes (points)",
    "check_status": "status of the check run",
}

_LR_DIR = re.compile(r"^lr(.+)$")


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


def check_epochs(epochs: int, factor: float) -> int:
    """Epochs of the check run: at least `factor` x the schedule's (rounded up, so that 7 x 1.5
    trains 11 epochs, not Python's round-half-even 10)."""
    return int(math.ceil(epochs * factor - 1e-9))


def resolve_grid_run(repl: str | Path, profile: str, arm: str, lr: float,
                     overrides: list[str] = ()) -> dict:
    """A grid run's config: the profile's run config of `arm`, seed `sweep.seed`, lr = `lr`.

    The lr is applied after the profile's own `arm_overrides` (which hold the chosen values), so
    the sweep always trains at the grid value.
    """
    settings = sweep_settings(load_profile(repl, profile, overrides))
    cfg = resolve(repl, profile, arm, settings["seed"], [*overrides, f"optim.lr={lr!r}"])
    cfg.pop("sweep", None)
    cfg["sweep_role"] = "grid"
    return cfg


def _last_row(run_dir: Path) -> dict:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    return df.iloc[-1].to_dict() if len(df) else {}


def _run_row(run_dir: Path, root: Path) -> dict:
    row = {"run_dir": run_dir.relative_to(root).as_posix()}
    env = run_dir / "env.json"
    last = _last_row(run_dir)
    if env.is_file():
        train = read_json(env).get("train", {})
        row["status"] = train.get("status", "ok")
        row["train_time_s"] = train.get("train_time_s", math.nan)
        row["epochs"] = train.get("epochs_completed", len(pd.read_csv(run_dir / "metrics.csv"))
                                  if (run_dir / "metrics.csv").is_file() else 0)
    else:
        row.update(status="missing", train_time_s=math.nan, epochs=0)
    for key in ("val_top1", "val_loss", "train_loss"):
        value = last.get(key, math.nan)
        row[key] = float(value) if row["status"] == "ok" else math.nan
    return row


def grid_table(sweep_dir: str | Path, runs: list[str | Path]) -> pd.DataFrame:
    """One row per grid run (GRID_COLUMNS), the best held-out top-1 of each arm marked chosen."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for run in map(Path, runs):
        match = _LR_DIR.match(run.name)
        if not match:
            raise ValueError(f"grid run folder {run} is not named lr<value>")
        rows.append({"arm": run.parent.name, "lr": float(match.group(1)),
                     **_run_row(run, sweep_dir)})
    df = pd.DataFrame(rows)
    if df.empty:
        raise FileNotFoundError(f"no grid runs given for {sweep_dir}")
    df = df.sort_values(["arm", "lr"], kind="stable").reset_index(drop=True)
    df["chosen"] = False
    for arm, sub in df.groupby("arm", sort=False):
        scores = sub["val_top1"].where(sub["status"] == "ok")
        if scores.notna().any():
            df.loc[scores.idxmax(), "chosen"] = True  # a tie goes to the smaller lr (first row)
    return df[list(GRID_COLUMNS)]


def chosen_lr(grid_csv: str | Path, arm: str) -> float:
    df = pd.read_csv(grid_csv)
    sub = df[(df["arm"] == arm) & (df["chosen"].astype(bool))]
    if sub.empty:
        raise ConfigError(f"{grid_csv}: arm {arm!r} has no finished grid run to choose from; "
                          "run `make sweep-convnext` to train the grid first")
    return float(sub["lr"].iloc[0])


def resolve_check_run(repl: str | Path, profile: str, arm: str, grid_csv: str | Path,
                      overrides: list[str] = ()) -> dict:
    """The check run: the arm at its chosen lr, sweep.seed, epochs x sweep.check_epochs_factor."""
    settings = sweep_settings(load_profile(repl, profile, overrides))
    lr = chosen_lr(grid_csv, arm)
    cfg = resolve(repl, profile, arm, settings["seed"], [*overrides, f"optim.lr={lr!r}"])
    epochs = int(cfg["trainer"]["max_epochs"])
    cfg["trainer"]["max_epochs"] = check_epochs(epochs, settings["check_epochs_factor"])
    cfg.pop("sweep", None)
    cfg["sweep_role"] = "check"
    return cfg


def sweep_summary(grid: pd.DataFrame, sweep_dir: Path, arms: list[str]) -> pd.DataFrame:
    rows = []
    for arm in arms:
        arm_lrs = grid.loc[grid["arm"] == arm, "lr"]
        ok = grid[(grid["arm"] == arm) & (grid["status"] == "ok")]
        chosen = ok[ok["chosen"].astype(bool)]
        best = chosen.iloc[0] if len(chosen) else None
        rest = ok.drop(chosen.index[:1]).sort_values(["val_top1", "lr"], ascending=[False, True],
                                                      kind="stable")
        second = rest.iloc[0] if len(rest) else None
        check = _run_row(sweep_dir / arm / "check", sweep_dir) \
            if (sweep_dir / arm / "check").is_dir() else {"status": "missing"}
        check_top1 = check.get("val_top1", math.nan)
        base = float(best["val_top1"]) if best is not None else math.nan
        rows.append({
            "arm": arm,
            "chosen_lr": float(best["lr"]) if best is not None else math.nan,
            "chosen_at_edge": best is not None and len(arm_lrs) > 1 and float(best["lr"]) in (
                float(arm_lrs.min()), float(arm_lrs.max())),
            "val_top1": base,
            "runner_up_lr": float(second["lr"]) if second is not None else math.nan,
            "runner_up_val_top1": float(second["val_top1"]) if second is not None else math.nan,
            "check_epochs": check.get("epochs", 0),
            "check_val_top1": check_top1,
            "check_gain": check_top1 - base,
            "check_status": check.get("status", "missing"),
        })
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def sweep_figure(grid: pd.DataFrame, summary: pd.DataFrame, out_stem: Path) -> list[Path]:
    """Held-out top-1 vs lr (log axis), one line per arm; chosen lr ringed, check run as a star."""
    from normrepro import plots

    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, (arm, sub) in enumerate(grid.groupby("arm", sort=True)):
        color = f"C{i}"
        sub = sub.sort_values("lr")
        ax.plot(sub["lr"], sub["val_top1"], "o-", color=color, label=arm)
        bad = sub[sub["status"] != "ok"]
        for lr in bad["lr"]:
            ax.axvline(lr, color=color, ls=":", lw=1)
        s = summary[summary["arm"] == arm]
        if len(s) and math.isfinite(float(s["chosen_lr"].iloc[0])):
            lr, top1 = float(s["chosen_lr"].iloc[0]), float(s["val_top1"].iloc[0])
            ax.plot([lr], [top1], "o", ms=13, mfc="none", mec=color)
            check = float(s["check_val_top1"].iloc[0])
            if math.isfinite(check):
                ax.plot([lr], [check], "*", ms=11, color=color,
                        label=f"{arm}: {int(s['check_epochs'].iloc[0])} epochs at chosen lr")
    ax.set_xscale("log")
    lrs = sorted(set(float(v) for v in grid["lr"]))
    ax.set_xticks(lrs, [f"{v:g}" for v in lrs])  # the grid's values, no crowded minor labels
    ax.minorticks_off()
    ax.set_xlabel("peak learning rate (AdamW)")
    ax.set_ylabel("held-out top-1 (%) after the last epoch")
    ax.set_title("learning-rate sweep (one seed; held-out split, never test)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: no point hidden
    fig.tight_layout()
    return plots.save_figure(fig, out_stem)


def finish(sweep_dir: str | Path, runs: list[str | Path], arms: list[str]) -> pd.DataFrame:
    """grid.csv, summary.csv and the figure of a sweep folder."""
    sweep_dir = Path(sweep_dir)
    grid = grid_table(sweep_dir, runs)
    _write_csv(grid, sweep_dir / "grid.csv")
    summary = sweep_summary(grid, sweep_dir, arms)
    _write_csv(summary, sweep_dir / "summary.csv")
    sweep_figure(grid, summary, sweep_dir / "figures" / "sweep")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.tasks.image_classification.sweep", description=__doc__,
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
            for row in summary.itertuples():
                print(f"[sweep] {row.arm}: chosen lr {row.chosen_lr:g} (held-out top-1 "
                      f"{row.val_top1:.2f}); {row.check_epochs} epochs: "
                      f"{row.check_val_top1:.2f} ({row.check_gain:+.2f})"
                      + ("; the chosen lr is on the grid's edge" if row.chosen_at_edge else ""),
                      flush=True)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
