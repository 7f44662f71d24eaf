"""Batch-statistic fluctuation during training (the PowerNorm paper's Figure 2 analysis).

For each chosen BN / PN-V layer and recorded step: how far the batch statistics are from the
running statistics (forward: (1/d)‖μ_B − μ‖, (1/d)‖σ²_B − σ²‖ for BN, (1/d)‖ψ²_B − ψ²‖ for PN-V)
and how large the loss gradients with respect to the batch statistics are (backward:
(1/d)‖g_μ‖, (1/d)‖g_σ²‖, (1/d)‖g_ψ²‖). The paper's point: on images these stay small and steady,
on text they are large and erratic, which is why BN hurts transformers.

The numbers come from the norms themselves (`record_stats` / `last_stats`, see
"Batch-statistic recording" in `normrepro.norms.batch`); this module switches recording on for
chosen layers and collects rows:

* `BatchStatsRecorder(model, layers)`: select layers, `enable()` / `disable()` (or `with`),
  `collect(**meta)` after the backward of a recorded step, `to_csv(path)`.
* `StatsRecorderCallback(out_csv, layers, every_n_steps)`: the same for a Lightning `Trainer`;
  records every n-th optimizer step on global rank 0 and writes the CSV (atomically) at the end of
  each epoch and of training, with columns `step, epoch, pct_training, rank, layer, norm, n` and
  the statistics (NaN where a statistic does not apply to the layer's norm).
* `python -m normrepro.insights.fluctuation --csv LABEL=FILE ... --out DIR`: the figure
  (`fluctuation.png/.pdf`, one panel per statistic, x = % of training, one line per label) and
  `fluctuation_summary.csv` (per label and statistic: median and mean over steps, and the median
  over the first and the last 10 % of training).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import lightning as L
import pandas as pd
import torch
from torch import nn

from normrepro.errors import cli
from normrepro.io import atomic_path

STATS = ("mu_dist", "var_dist", "psi_dist", "g_mu", "g_var", "g_psi")
COLUMNS = ("step", "epoch", "pct_training", "rank", "layer", "norm", "n") + STATS
LABELS = {
    "mu_dist": r"$\frac{1}{d}\|\mu_B-\mu\|$",
    "var_dist": r"$\frac{1}{d}\|\sigma^2_B-\sigma^2\|$",
    "psi_dist": r"$\frac{1}{d}\|\psi^2_B-\psi^2\|$",
    "g_mu": r"$\frac{1}{d}\|g_\mu\|$",
    "g_var": r"$\frac{1}{d}\|g_{\sigma^2}\|$",
    "g_psi": r"$\frac{1}{d}\|g_{\psi^2}\|$",
}

LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None


def records_stats(module: nn.Module) -> bool:
    """Whether `module` supports `record_stats` (the BN family and PN-V)."""
    return hasattr(module, "record_stats") and hasattr(module, "last_stats")


def select_layers(model: nn.Module, layers: LayerSelector = None) -> dict[str, nn.Module]:
    """The recordable norm modules of `model` chosen by `layers`, by qualified name.

    `layers`: None (all of them), a name or glob pattern (`"*.norm"`) or a list of them (each
    must match at least one layer), or a predicate `(name, module) -> bool`.
    """
    candidates = {name: m for name, m in model.named_modules() if records_stats(m)}
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no layer that records batch statistics; only the "
            "registry's 'batch', 'batch_unmasked', 'batch2d', 'sync_batch', 'sync_batch2d' and "
            "'power_vanilla' do (is this an arm with LayerNorm?)")
    if layers is None:
        return candidates
    if callable(layers):
        chosen = {n: m for n, m in candidates.items() if layers(n, m)}
        if not chosen:
            raise ValueError(f"the layer predicate selected none of {sorted(candidates)}")
        return chosen
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = {}
    for pat in patterns:
        hits = {n: m for n, m in candidates.items() if fnmatch.fnmatchcase(n, pat)}
        if not hits:
            raise ValueError(f"no recordable layer matches {pat!r}; the recordable layers are: "
                             f"{', '.join(sorted(candidates))}")
        chosen.update(hits)
    return dict(sorted(chosen.items(), key=lambda kv: list(candidates).index(kv[0])))


class BatchStatsRecorder:
    """Switches `record_stats` on/off for chosen layers and turns their `last_stats` into rows.

    Usage: `rec.enable()`; forward and backward one training step; `rec.collect(step=k)`;
    `rec.disable()`. Recording off costs nothing in the norms' forward; on, BN runs an eager path.
    """

    def __init__(self, model: nn.Module, layers: LayerSelector = None):
        self.layers = select_layers(model, layers)
        self.rows: list[dict] = []

    def enable(self) -> None:
        for module in self.layers.values():
            module.record_stats = True
            module.last_stats = {}

    def disable(self) -> None:
        for module in self.layers.values():
            module.record_stats = False

    def __enter__(self) -> "BatchStatsRecorder":
        self.enable()
        return self

    def __exit__(self, *exc) -> None:
        self.disable()

    def collect(self, **meta) -> list[dict]:
        """One row per layer that recorded since the last call (its `last_stats` is then
        cleared), with `meta` (e.g. step=...) in front. Statistics missing for a layer (a
        backward that did not reach it; one that does not apply to its norm) are NaN."""
        pending = [(n, m) for n, m in self.layers.items() if m.last_stats]
        if not pending:
            return []
        keys = [("n",) + tuple(k for k in STATS if k in m.last_stats) for _, m in pending]
        # one device-to-host copy for all layers instead of one per number
        flat = torch.stack([m.last_stats[k].detach().float().reshape(())
                            for (_, m), ks in zip(pending, keys) for k in ks]).tolist()
        new, i = [], 0
        for (name, module), ks in zip(pending, keys):
            row = dict(meta, layer=name, norm=type(module).__name__)
            row.update({k: math.nan for k in STATS})
            for k in ks:
                row[k] = flat[i]
                i += 1
            module.last_stats = {}
            new.append(row)
        self.rows.extend(new)
        return new

    def dataframe(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        front = [c for c in COLUMNS if c in df.columns]
        return df[front + [c for c in df.columns if c not in front]]

    def to_csv(self, path: str | Path) -> Path:
        with atomic_path(path, suffix=".csv") as tmp:
            self.dataframe().to_csv(tmp, index=False)
        return Path(path)


class StatsRecorderCallback(L.Callback):
    """Record batch statistics of chosen layers every `every_n_steps` optimizer steps.

    `out_csv`: where the rows go (rewritten atomically at each epoch end and at the end of fit);
    `layers`: see `select_layers` (names are relative to the LightningModule, e.g.
    `"model.stages.0.blocks.0.norm"`). Only global rank 0 records (under DDP the others' per-worker
    statistics are alike; with sync BN they are identical). `pct_training` = 100·(step+1) /
    `trainer.estimated_stepping_batches`. On a resumed fit, rows of steps already done are kept
    from the existing CSV, so an interrupted run's records continue without duplicates.
    """

    def __init__(self, out_csv: str | Path, layers: LayerSelector = None, every_n_steps: int = 1):
        super().__init__()
        if int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps!r}")
        self.out_csv = Path(out_csv)
        self.layers = layers
        self.every_n_steps = int(every_n_steps)
        self.recorder: BatchStatsRecorder | None = None
        self._recording_step: int | None = None
        self._last_step = -1
        self._total = math.nan

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.recorder = BatchStatsRecorder(pl_module, self.layers)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        self._total = float(total) if total and math.isfinite(total) else math.nan
        self.recorder.rows = []
        self._last_step = -1
        if trainer.global_step > 0 and self.out_csv.exists():  # resumed: keep the steps done
            old = pd.read_csv(self.out_csv)
            old = old[old["step"] < trainer.global_step]
            self.recorder.rows = old.to_dict("records")
            self._last_step = int(old["step"].max()) if len(old) else -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches share a step: record its first one.
        if (trainer.is_global_zero and step % self.every_n_steps == 0 and step != self._last_step):
            self._recording_step = step
            self.recorder.enable()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._recording_step is None:
            return
        step = self._recording_step
        self.recorder.collect(step=step, epoch=trainer.current_epoch,
                              pct_training=100.0 * (step + 1) / self._total,
                              rank=trainer.global_rank)
        self.recorder.disable()
        self._last_step, self._recording_step = step, None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero and self.recorder is not None and self.recorder.rows:
            self.recorder.to_csv(self.out_csv)


# --------------------------------------------------------------------------------------------
# the figure and its summary table

def load_records(sources: dict[str, str | Path]) -> pd.DataFrame:
    """Concatenate recorder CSVs, adding a `label` column (e.g. "ConvNeXt BN, images")."""
    frames = []
    for label, path in sources.items():
        df = pd.read_csv(path)
        missing = {"step", "pct_training", "layer"} - set(df.columns)
        if missing:
            raise ValueError(f"{path} is not a batch-statistics record (missing columns "
                             f"{sorted(missing)}); it should come from StatsRecorderCallback")
        frames.append(df.assign(label=label))
    if not frames:
        raise ValueError("no record CSV given")
    return pd.concat(frames, ignore_index=True)


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """Per label and statistic: median and mean over steps (layers averaged per step), and the
    median over the first and the last 10 % of training."""
    rows = []
    per_step = records.groupby(["label", "step"], sort=False).agg(
        {"pct_training": "first", **{s: "mean" for s in STATS if s in records}}).reset_index()
    for label, df in per_step.groupby("label", sort=False):
        for stat in STATS:
            if stat not in df or df[stat].isna().all():
                continue
            v = df[stat].dropna()
            early = df.loc[df["pct_training"] <= 10, stat].dropna()
            late = df.loc[df["pct_training"] >= 90, stat].dropna()
            rows.append({"label": label, "statistic": stat, "steps": int(v.size),
                         "median": v.median(), "mean": v.mean(),
                         "median_first_10pct": early.median() if len(early) else math.nan,
                         "median_last_10pct": late.median() if len(late) else math.nan})
    return pd.DataFrame(rows)


def plot_fluctuation(records: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """One panel per statistic present: the value (mean over the recorded layers) against
    % of training, one line per label, log scale."""
    from normrepro.plots import save_figure  # matplotlib only when drawing
    import matplotlib.pyplot as plt
    import seaborn as sns

    stats = [s for s in STATS if s in records and records[s].notna().any()]
    if not stats:
        raise ValueError("the records hold no statistic to plot")
    per_step = records.groupby(["label", "step"], sort=False).agg(
        {"pct_training": "first", **{s: "mean" for s in stats}}).reset_index()
    ncol = min(len(stats), 3)
    nrow = math.ceil(len(stats) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    for ax, stat in zip(axes.flat, stats):
        sns.lineplot(data=per_step, x="pct_training", y=stat, hue="label", ax=ax, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("% of training")
        ax.set_ylabel(LABELS[stat])
        ax.set_title(("forward: " if "dist" in stat else "backward: ") + LABELS[stat], fontsize=9)
        ax.grid(alpha=0.3)
        if ax is not axes.flat[0] and ax.get_legend() is not None:
            ax.get_legend().remove()
    for ax in list(axes.flat)[len(stats):]:
        ax.remove()
    fig.tight_layout()
    return save_figure(fig, out_stem)


def _parse_sources(items: Iterable[str]) -> dict[str, str]:
    sources = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--csv expects LABEL=FILE, got {item!r}")
        if not Path(path).exists():
            raise SystemExit(f"--csv {item!r}: {path} does not exist (train with "
                             "StatsRecorderCallback first)")
        sources[label] = path
    return sources


@cli
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", action="append", required=True, metavar="LABEL=FILE",
                    help="a StatsRecorderCallback CSV and its legend label (repeat)")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    args = ap.parse_args(argv)
    records = load_records(_parse_sources(args.csv))
    summary = summarize(records)
    with atomic_path(args.out / "fluctuation_summary.csv", suffix=".csv") as tmp:
        summary.to_csv(tmp, index=False)
    paths = plot_fluctuation(records, args.out / "fluctuation")
    print(summary.to_string(index=False))
    print("wrote", args.out / "fluctuation_summary.csv", *paths)


if __name__ == "__main__":
    main()
