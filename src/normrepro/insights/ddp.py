"""BatchNorm under data parallelism: per-worker vs synchronised statistics, accuracy and cost.

Under DDP each worker normalises with the statistics of its own share of the batch (Goyal et al.
2017 keep it that way and treat the per-worker batch size as a BN hyperparameter); synchronised BN
(`sync_batch2d`) uses the statistics of the whole global batch, at the price of two all-reduces
per BN layer per step (`normrepro.insights.sync_cost`). Two things are measured here:

* `WorkerStatsCallback`: during a DDP fit, for chosen BN layers and every n-th step, each worker's
  per-channel mean and variance of the layer's input and those of the global batch (all workers
  together, the statistics `sync_batch2d` normalises with), gathered with one extra all-reduce per
  layer on recorded steps only. Rank 0 writes one row per (step, layer, worker): `mu_dist` =
  (1/d)‖μ_k − μ‖, `var_dist` = (1/d)‖σ²_k − σ²‖, and the scale-free `mu_shift_sd` = mean over
  channels of |μ_k − μ| / σ and `var_rel_change` = mean of |σ²_k − σ²| / σ².
* `python -m normrepro.insights.ddp --run LABEL=RUN ... --sync-cost CSV --out DIR`: per run
  (trained by `normrepro.insights.runs`, evaluated by `normrepro.tasks.image_classification.evaluate`) the test
  accuracy, the training throughput and the mean worker-vs-global deviation → `ddp.csv`, per
  layer → `ddp_layers.csv`, and the figure `ddp.png/.pdf`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import lightning as L
import pandas as pd
import torch
import torch.distributed as dist

from normrepro.errors import cli
from normrepro.insights.fluctuation import LayerSelector, select_layers
from normrepro.io import atomic_path, read_json

WORKER_STATS = ("mu_dist", "var_dist", "mu_shift_sd", "var_rel_change")
WORKER_COLUMNS = ("step", "epoch", "pct_training", "layer", "norm", "world_size", "worker", "n") \
    + WORKER_STATS
EPS = 1e-5


def _local_moments(x: torch.Tensor, pad_mask: torch.Tensor | None):
    """(count, mean, M2) per channel of a norm input: images (B, C, H, W), sequences (T, B, C)
    over their non-pad tokens; float64."""
    x = x.detach().double()
    if x.dim() == 4:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).t()
    elif x.dim() == 3:
        T, B, C = x.shape
        flat = x.reshape(T * B, C)
        if pad_mask is not None:
            flat = flat[(~pad_mask).t().reshape(T * B).to(flat.device)]
    else:
        raise ValueError(f"expected a (B, C, H, W) or (T, B, C) input, got shape {tuple(x.shape)}")
    n = flat.shape[0]
    mean = flat.mean(0) if n else flat.new_zeros(flat.shape[1])
    m2 = ((flat - mean) ** 2).sum(0)
    return float(n), mean, m2


def worker_vs_global(n: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> list[dict]:
    """Deviation of each worker's statistics from the global ones.

    `n` (W,), `mean` and `m2` (W, C): every worker's count, per-channel mean and sum of squared
    deviations. The global mean and (biased) variance are combined from them (Chan et al.), as
    synchronised BN computes them. One dict of `WORKER_STATS` per worker.
    """
    total = n.sum()
    g_mean = (n[:, None] * mean).sum(0) / total
    g_var = (m2 + n[:, None] * (mean - g_mean) ** 2).sum(0) / total
    C = mean.shape[1]
    out = []
    for k in range(n.shape[0]):
        var_k = m2[k] / n[k].clamp_min(1.0)
        out.append({
            "n": int(n[k]),
            "mu_dist": float((mean[k] - g_mean).norm()) / C,
            "var_dist": float((var_k - g_var).norm()) / C,
            "mu_shift_sd": float(((mean[k] - g_mean).abs() * torch.rsqrt(g_var + EPS)).mean()),
            "var_rel_change": float(((var_k - g_var).abs() / (g_var + EPS)).mean()),
        })
    return out


class WorkerStatsCallback(L.Callback):
    """Per-worker vs global BN statistics of chosen layers every `every_n_steps` steps (module doc).

    `layers`: as `normrepro.insights.fluctuation.select_layers` (names relative to the
    LightningModule). Every rank takes part in the gather; rank 0 keeps the rows and writes
    `out_csv` atomically at each epoch end and at the end of fit. On a resumed fit the rows of
    steps already done are kept from the existing CSV.
    """

    def __init__(self, out_csv: str | Path, layers: LayerSelector = None, every_n_steps: int = 1):
        super().__init__()
        if int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps!r}")
        self.out_csv = Path(out_csv)
        self.layers = layers
        self.every_n_steps = int(every_n_steps)
        self.rows: list[dict] = []
        self._handles: list = []
        self._meta: dict | None = None
        self._total = math.nan
        self._rank = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        for name, module in select_layers(pl_module, self.layers).items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            if self._meta is None or not module.training:
                return
            pad = args[1] if len(args) > 1 else kwargs.get("pad_mask")
            n, mean, m2 = _local_moments(args[0], pad)
            C = mean.numel()
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                world, rank = dist.get_world_size(), dist.get_rank()
                # each worker fills its own row of a zero buffer; the sum gathers all rows
                buf = torch.zeros(world, 2 * C + 1, dtype=torch.float64, device=mean.device)
                buf[rank, 0], buf[rank, 1:C + 1], buf[rank, C + 1:] = n, mean, m2
                dist.all_reduce(buf)
            else:
                world, rank = 1, 0
                buf = torch.cat([mean.new_tensor([n]), mean, m2])[None]
            if rank != 0:
                return
            buf = buf.cpu()
            for k, stats in enumerate(worker_vs_global(buf[:, 0], buf[:, 1:C + 1], buf[:, C + 1:])):
                self.rows.append(dict(self._meta, layer=name, norm=type(module).__name__,
                                      world_size=world, worker=k, **stats))
        return hook

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.estimated_stepping_batches
        self._total = float(total) if total and math.isfinite(total) else math.nan
        self._rank = trainer.global_rank
        self.rows = []
        if trainer.global_step > 0 and self.out_csv.exists():  # resumed: keep the steps done
            old = pd.read_csv(self.out_csv)
            self.rows = old[old["step"] < trainer.global_step].to_dict("records")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0:  # the same decision on every rank: all join the gather
            self._meta = {"step": step, "epoch": trainer.current_epoch,
                          "pct_training": 100.0 * (step + 1) / self._total}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._meta = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer)

    def write(self, trainer) -> None:
        if trainer.is_global_zero and self.rows:
            df = pd.DataFrame(self.rows)
            front = [c for c in WORKER_COLUMNS if c in df.columns]
            with atomic_path(self.out_csv, suffix=".csv") as tmp:
                df[front].to_csv(tmp, index=False, float_format="%.6g")


# --------------------------------------------------------------------------------------------
# summary and figure of the DDP runs

def summarize_runs(runs: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run, one row per run and layer) from the run folders {label: folder}."""
    from normrepro.config import load_yaml

    rows, layers = [], []
    for label, run in runs.items():
        for name in ("config.yaml", "final.json", "env.json", "metrics.csv", "worker_stats.csv"):
            if not (run / name).is_file():
                raise FileNotFoundError(f"{run / name} not found: train the run "
                                        "(python -m normrepro.insights.runs train) and evaluate it "
                                        "(python -m normrepro.tasks.image_classification.evaluate) first")
        cfg = load_yaml(run / "config.yaml")
        final = read_json(run / "final.json")
        train = read_json(run / "env.json").get("train", {})
        metrics = pd.read_csv(run / "metrics.csv")
        ws = pd.read_csv(run / "worker_stats.csv")
        # throughput: epochs after the first (which pays start-up and warm-up), if there are any
        tput = metrics["train_images_per_s"].iloc[1:] if len(metrics) > 1 else metrics["train_images_per_s"]
        rows.append({
            "run": label, "norm": cfg["model"]["norm"], "world_size": train.get("world_size"),
            "batch_per_worker": int(cfg["data"]["batch_size"]),
            "effective_batch": train.get("effective_batch"), "epochs": train.get("epochs_completed"),
            "status": final.get("status"), "test_top1": final.get("test_top1"),
            "test_loss": final.get("test_loss"), "n_test": final.get("n_test"),
            "val_top1": final.get("val_top1"), "train_images_per_s": float(tput.mean()),
            "train_time_s": train.get("train_time_s"),
            "recorded_steps": int(ws["step"].nunique()), "bn_layers": int(ws["layer"].nunique()),
            **{f"worker_{s}": float(ws[s].mean()) for s in WORKER_STATS},
        })
        order = list(dict.fromkeys(ws["layer"]))
        per_layer = ws.groupby("layer", sort=False)[list(WORKER_STATS)].mean().reset_index()
        per_layer["layer_index"] = per_layer["layer"].map(order.index)
        layers.append(per_layer.assign(run=label))
    return pd.DataFrame(rows), pd.concat(layers, ignore_index=True)


def plot(summary: pd.DataFrame, layers: pd.DataFrame, sync_cost: pd.DataFrame | None,
         out_stem: str | Path) -> list[Path]:
    """Worker-vs-global deviation per layer, test accuracy, training throughput, and the
    per-layer cost of synchronising (from sync_cost.csv)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from normrepro.plots import save_figure

    n = 4 if sync_cost is not None else 3
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 3.7))
    ax = axes[0]
    for run, df in layers.groupby("run", sort=False):
        ax.plot(df["layer_index"], df["mu_shift_sd"], marker="o", ms=3, label=f"{run}: mean")
        ax.plot(df["layer_index"], df["var_rel_change"], marker="s", ms=3, ls="--",
                label=f"{run}: variance")
    ax.set_xlabel("BN layer (input to output)")
    ax.set_ylabel("worker vs global batch statistics\n(mean: |Δμ|/σ, variance: |Δσ²|/σ²)",
                  fontsize=8)
    ax.set_title("what per-worker BN normalises with", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    for ax, col, title in ((axes[1], "test_top1", "test top-1 (%)"),
                           (axes[2], "train_images_per_s", "DDP training images/s")):
        sns.barplot(data=summary, x="run", y=col, ax=ax, hue="run", legend=False)
        for patch, v in zip(ax.patches, summary[col]):
            if v is not None and math.isfinite(float(v)):
                ax.annotate(f"{float(v):.1f}", (patch.get_x() + patch.get_width() / 2, patch.get_height()),
                            ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel(title)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    if sync_cost is not None:
        ax = axes[3]
        cost = sync_cost.melt(id_vars=["case"], value_vars=["plain_ms", "sync_ms"], var_name="method",
                              value_name="ms")
        cost["method"] = cost["method"].map({"plain_ms": "per-worker BN", "sync_ms": "synchronised BN"})
        cost["case"] = cost["case"].str.replace(" (", "\n(", regex=False)
        sns.barplot(data=cost, x="case", y="ms", hue="method", ax=ax)
        ax.set_xlabel("")
        ax.set_ylabel("ms per BN layer per step (fwd + bwd)")
        ax.set_title(f"{int(sync_cost['collectives_per_step'].iloc[0])} extra all-reduces "
                     "per layer per step", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    world = summary["world_size"].dropna()
    fig.suptitle(f"ConvNeXt BN under DDP on {int(world.iloc[0]) if len(world) else '?'} CPU "
                 "processes (gloo): per-worker vs synchronised statistics", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def _parse_runs(items: Sequence[str]) -> dict[str, Path]:
    runs = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--run expects LABEL=RUN_DIR, got {item!r}")
        runs[label] = Path(path)
    return runs


@cli
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR",
                    help="a DDP run folder with worker_stats.csv and final.json (repeat)")
    ap.add_argument("--sync-cost", type=Path, help="sync_cost.csv of normrepro.insights.sync_cost")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    args = ap.parse_args(argv)
    summary, layers = summarize_runs(_parse_runs(args.run))
    cost = None
    if args.sync_cost is not None:
        if not args.sync_cost.is_file():
            raise SystemExit(f"--sync-cost {args.sync_cost} does not exist (run "
                             "python -m normrepro.insights.sync_cost first)")
        cost = pd.read_csv(args.sync_cost)
    for name, df in (("ddp.csv", summary), ("ddp_layers.csv", layers)):
        with atomic_path(args.out / name, suffix=".csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    paths = plot(summary, layers, cost, args.out / "ddp")
    with pd.option_context("display.width", 200, "display.float_format", "{:.3g}".format):
        print(summary.to_string(index=False))
    print(f"wrote {args.out / 'ddp.csv'}, {args.out / 'ddp_layers.csv'},", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
