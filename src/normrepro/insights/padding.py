"""Padding and variable length: what counting padding does to BatchNorm's statistics and training.

Sentences in a batch have different lengths, so a (T, B, C) batch is padded. The registry's
`batch` norm computes its statistics over the real tokens only (masked BN). A BatchNorm that
ignores the mask, as `torch.nn.BatchNorm1d` applied to the flattened (T·B, C) tokens would, counts
the padding positions too; the registry has that norm as `batch_unmasked`
(`normrepro.norms.batch.UnmaskedBatchNorm`), so a translation config selects it by name
(`model.encoder_norm: batch_unmasked`). This module measures the difference two ways:

* **Statistics vs padding fraction.** Real training batches go through the encoder of a trained
  masked-BN model (eval mode, weights of its last snapshot); a forward pre-hook on every encoder
  norm captures its input x and padding mask, and for each (batch, norm) we compare the
  statistics over the real tokens (what `batch` uses) with those over all T·B positions (what
  `batch_unmasked` uses): `mu_dist` = (1/d)‖μ_all − μ_real‖, `var_dist` = (1/d)‖σ²_all − σ²_real‖
  (the PowerNorm paper's distance), the scale-free `mu_shift_sd` = mean over channels of
  |μ_all − μ_real| / σ_real and `var_rel_change` = mean of |σ²_all − σ²_real| / σ²_real, and
  `out_change` = ‖ẑ_all − ẑ_real‖ / ‖ẑ_real‖ over the real tokens (ẑ = the normalised input
  before the affine transform). Two kinds of batches: `bucketed`, the training batches exactly as
  fairseq builds them (sentences sorted by length, so little padding), and `random`, the same
  batch sizes with sentences grouped at random (much more padding). Rows are binned by the
  batch's padding fraction of the source side.
* **Training.** The loss (and greedy BLEU) curves of two otherwise identical runs, encoder
  `batch` vs `batch_unmasked` (`normrepro.insights.runs`), read from their `metrics.csv`.

    python -m normrepro.insights.padding --masked-run RUN_BN --unmasked-run RUN_BN_UNMASKED \\
        --data data/processed/bible-de-en --out DIR [--batches 200] [--seed 0]

writes `padding_batches.csv` (one row per batch and norm), `padding_bins.csv` (medians per
padding bin and norm), `padding_training.csv` (one row per run) and `padding.png/.pdf`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from normrepro.errors import cli
from normrepro.io import atomic_path

UNMASKED = "batch_unmasked"  # the registry's BatchNorm that counts padding
METRICS = ("mu_dist", "var_dist", "mu_shift_sd", "var_rel_change", "out_change")
DEFAULT_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
EPS = 1e-5


# --------------------------------------------------------------------------------------------
# statistics of one captured norm input

def compare_statistics(x: torch.Tensor, pad_mask: torch.Tensor | None, eps: float = EPS) -> dict:
    """Masked (real tokens) vs unmasked (all positions) per-channel statistics of x (T, B, C);
    `pad_mask` (B, T) is True at padding. Returns the padding fraction and `METRICS`."""
    T, B, C = x.shape
    x = x.detach().double()
    flat = x.reshape(T * B, C)
    real = torch.ones(T * B, dtype=torch.bool) if pad_mask is None else (~pad_mask).t().reshape(T * B)
    xr = flat[real.to(flat.device)]
    if xr.shape[0] == 0:
        raise ValueError("the batch has no real token")
    mu_r, var_r = xr.mean(0), xr.var(0, unbiased=False)
    mu_a, var_a = flat.mean(0), flat.var(0, unbiased=False)
    z_r = (xr - mu_r) * torch.rsqrt(var_r + eps)
    z_a = (xr - mu_a) * torch.rsqrt(var_a + eps)
    return {
        "pad_frac": 1.0 - xr.shape[0] / (T * B),
        "tokens": int(xr.shape[0]),
        "positions": T * B,
        "mu_dist": float((mu_a - mu_r).norm()) / C,
        "var_dist": float((var_a - var_r).norm()) / C,
        "mu_shift_sd": float(((mu_a - mu_r).abs() * torch.rsqrt(var_r + eps)).mean()),
        "var_rel_change": float(((var_a - var_r).abs() / (var_r + eps)).mean()),
        "out_change": float((z_a - z_r).norm() / z_r.norm().clamp_min(1e-300)),
    }


# --------------------------------------------------------------------------------------------
# batches and the trained model

def _batches(dataset, max_tokens: int, max_positions: int | None, n: int, seed: int):
    """`n` bucketed batches (fairseq's, shuffled) and `n` random batches of the same sizes."""
    from normrepro.tasks.translation.datamodule import make_batches

    mp = (max_positions, max_positions) if max_positions else None
    bucketed = make_batches(dataset, max_tokens, None, seed, mp, drop_too_long=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(bucketed))
    bucketed = [bucketed[i] for i in order]
    pool = rng.permutation(np.concatenate(bucketed))
    random, start = [], 0
    for b in bucketed:
        random.append(pool[start:start + len(b)])
        start += len(b)
    return {"bucketed": bucketed[:n], "random": random[:n]}


def _last_snapshot(run: Path) -> Path:
    from normrepro.tasks.translation.common import snapshot_paths

    snaps = snapshot_paths(run)
    if not snaps:
        raise FileNotFoundError(f"no checkpoints/snapshot_u*.pt in {run}: train it first "
                                f"(python -m normrepro.insights.runs train --config {run}/config.yaml "
                                f"--out {run})")
    return snaps[-1]


def load_trained_model(run: str | Path, dictionary):
    """The translation model of a run folder with the weights of its last snapshot, eval mode."""
    from normrepro.config import load_yaml
    from normrepro.tasks.translation.common import load_weights, model_args
    from normrepro.tasks.translation.model import build_model

    run = Path(run)
    cfg = load_yaml(run / "config.yaml")
    model = build_model(model_args(cfg), dictionary, dictionary)
    snap = _last_snapshot(run)
    model.load_state_dict(load_weights(snap)["model"])
    return model.eval(), cfg, snap


@torch.no_grad()
def measure_batches(model, dataset, batches: dict[str, list]) -> pd.DataFrame:
    """One row per (batch kind, batch, encoder norm): `compare_statistics` of that norm's input."""
    from normrepro.tasks.translation.model import norm_modules

    encoder_norms = {n: m for n, m in norm_modules(model).items() if n.startswith("encoder.")}
    captured: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
    handles = []
    for name, module in encoder_norms.items():
        def hook(mod, args, kwargs, name=name):
            pad = args[1] if len(args) > 1 else kwargs.get("pad_mask")
            captured.append((name, args[0], pad))
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    rows = []
    try:
        for kind, blist in batches.items():
            for i, indices in enumerate(blist):
                sample = dataset.collater([dataset[int(j)] for j in indices])
                captured.clear()
                net = sample["net_input"]
                model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
                # The encoder passes no mask when the batch has no padding; the source padding
                # is then empty, which compare_statistics treats the same way.
                for depth, (name, x, pad) in enumerate(captured):
                    row = {"kind": kind, "batch": i, "sentences": len(indices), "norm_index": depth,
                           "layer": name}
                    row.update(compare_statistics(x, pad))
                    rows.append(row)
    finally:
        for h in handles:
            h.remove()
    return pd.DataFrame(rows)


def bin_rows(rows: pd.DataFrame, edges: Sequence[float] = DEFAULT_BINS) -> pd.DataFrame:
    """Medians of `METRICS` per encoder norm and padding-fraction bin [lo, hi) (the last bin
    also holds hi itself, so a batch of 100 % padding is counted)."""
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bin edges must be increasing, got {edges}")
    pad = rows["pad_frac"].to_numpy(dtype=float)
    if len(pad) and (pad.min() < edges[0] or pad.max() > edges[-1]):
        raise ValueError(f"padding fractions span [{pad.min():.3g}, {pad.max():.3g}], outside the "
                         f"bins [{edges[0]}, {edges[-1]}]")
    which = np.clip(np.searchsorted(edges, pad, side="right") - 1, 0, len(edges) - 2)
    out = []
    for (layer, b), df in rows.assign(_bin=which).groupby(["layer", "_bin"], sort=False):
        row = {"layer": layer, "norm_index": int(df["norm_index"].iloc[0]),
               "bin_lo": edges[b], "bin_hi": edges[b + 1],
               "batches": int(len(df)), "pad_frac_mean": float(df["pad_frac"].mean())}
        for kind in ("bucketed", "random"):
            row[f"n_{kind}"] = int((df["kind"] == kind).sum())
        row.update({m: float(df[m].median()) for m in METRICS})
        out.append(row)
    return pd.DataFrame(out).sort_values(["norm_index", "bin_lo"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# the two training runs

def training_table(runs: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run, the concatenated metrics.csv curves) for the runs {label: run folder}."""
    from normrepro.config import load_yaml

    rows, curves = [], []
    for label, run in runs.items():
        metrics = run / "metrics.csv"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics} not found: train the run first")
        df = pd.read_csv(metrics)
        cfg = load_yaml(run / "config.yaml")
        finite = df[np.isfinite(df["val_loss"])]
        last = df.iloc[-1]
        rows.append({"run": label, "encoder_norm": cfg["model"]["encoder_norm"],
                     "updates": int(last["updates"]),
                     "best_val_loss": float(finite["val_loss"].min()) if len(finite) else math.nan,
                     "last_val_loss": float(last["val_loss"]),
                     "last_train_loss": float(last["train_loss"]),
                     "last_val_bleu": float(last["val_bleu"]) if "val_bleu" in df else math.nan,
                     "best_val_bleu": float(df["val_bleu"].max()) if "val_bleu" in df else math.nan,
                     "val_bleu_sentences": int((cfg.get("val_bleu") or {}).get("sentences") or 0)})
        curves.append(df.assign(run=label))
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


# --------------------------------------------------------------------------------------------
# figure

def plot(rows: pd.DataFrame, bins: pd.DataFrame, curves: pd.DataFrame,
         out_stem: str | Path) -> list[Path]:
    """Three panels of statistics against the padding fraction (points: batches; lines: bin
    medians; one colour per encoder norm) and the validation loss of the two training runs."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from normrepro.plots import save_figure

    panels = (("mu_shift_sd", "mean shift |μ_all − μ_real| / σ_real"),
              ("var_rel_change", "variance change |σ²_all − σ²_real| / σ²_real"),
              ("out_change", "change of the normalised output\nat real tokens (relative)"))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    layers = list(dict.fromkeys(rows.sort_values("norm_index")["layer"]))
    palette = dict(zip(layers, sns.color_palette("viridis", len(layers))))
    short = {name: name.replace("encoder.", "").replace("_layer_norm", "") for name in layers}
    for ax, (metric, label) in zip(axes, panels):
        for layer in layers:
            df = rows[rows["layer"] == layer]
            for kind, marker in (("bucketed", "o"), ("random", "^")):
                part = df[df["kind"] == kind]
                ax.scatter(100 * part["pad_frac"], part[metric], s=9, alpha=0.45, marker=marker,
                           color=palette[layer], linewidths=0)
            b = bins[bins["layer"] == layer]
            ax.plot(100 * b["pad_frac_mean"], b[metric], color=palette[layer], lw=1.6,
                    label=short[layer])
        ax.set_xlabel("padding in the batch (% of T×B positions)")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(title="encoder norm (line: bin median)", fontsize=7, title_fontsize=7)
    axes[1].scatter([], [], marker="o", color="grey", s=12, label="length-bucketed batches")
    axes[1].scatter([], [], marker="^", color="grey", s=12, label="random batches")
    axes[1].legend(fontsize=7)
    ax = axes[3]
    for run, df in curves.groupby("run", sort=False):
        ax.plot(df["updates"], df["val_loss"], marker="o", ms=3, lw=1.4, label=run)
    ax.set_xlabel("updates")
    ax.set_ylabel("validation loss (bits/token)")
    ax.set_title("training: masked vs unmasked BN", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("BatchNorm statistics with and without the padding counted "
                 "(input of each encoder norm of a trained masked-BN model)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


@cli
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masked-run", required=True, type=Path,
                    help="run folder of the encoder-`batch` training (its last snapshot is used)")
    ap.add_argument("--unmasked-run", required=True, type=Path,
                    help="run folder of the encoder-`batch_unmasked` training")
    ap.add_argument("--data", required=True, type=Path, help="prepared translation data folder")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--batches", type=int, default=200, help="batches of each kind (default 200)")
    ap.add_argument("--bins", type=float, nargs="+", default=list(DEFAULT_BINS),
                    help="padding-fraction bin edges")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.batches < 1:
        raise SystemExit("--batches must be >= 1")
    from normrepro.tasks.translation.common import quiet_logging
    from normrepro.tasks.translation.datamodule import load_dictionary, load_pair_dataset

    quiet_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dictionary = load_dictionary(args.data)
    model, cfg, snap = load_trained_model(args.masked_run, dictionary)
    if cfg["model"]["encoder_norm"] != "batch":
        raise SystemExit(f"--masked-run {args.masked_run} trains encoder_norm="
                         f"{cfg['model']['encoder_norm']!r}; it must be the masked 'batch'")
    dataset = load_pair_dataset(args.data, "train", dictionary, shuffle=False)
    batches = _batches(dataset, int(cfg["data"]["max_tokens"]), cfg["data"].get("train_max_positions"),
                       args.batches, args.seed)
    rows = measure_batches(model, dataset, batches)
    bins = bin_rows(rows, args.bins)
    training, curves = training_table({"masked BN (batch)": args.masked_run,
                                       "unmasked BN (batch_unmasked)": args.unmasked_run})
    _write_csv(rows.assign(model_snapshot=snap.name), args.out / "padding_batches.csv")
    _write_csv(bins, args.out / "padding_bins.csv")
    _write_csv(training, args.out / "padding_training.csv")
    paths = plot(rows, bins, curves, args.out / "padding")
    first = bins[bins["norm_index"] == 0]
    with pd.option_context("display.width", 200, "display.float_format", "{:.3g}".format):
        print(first[["bin_lo", "bin_hi", "batches", "mu_shift_sd", "var_rel_change", "out_change"]]
              .to_string(index=False))
        print(training.to_string(index=False))
    print(f"wrote {args.out}/padding_batches.csv, padding_bins.csv, padding_training.csv,",
          ", ".join(map(str, paths)), f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
