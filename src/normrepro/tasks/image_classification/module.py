"""The LightningModule that trains one ConvNeXt arm with the paper's recipe, scaled to a profile.

Recipe (Liu et al. 2022, Section 2 / Appendix A.1): AdamW, lr = base_lr × effective batch / 4096
with base_lr 4e-3, weight decay 0.05 on conv/linear weights only, linear warm-up then cosine decay
stepped every optimizer step, label smoothing 0.1, stochastic depth; Mixup/CutMix through timm's
`Mixup` (which then also applies the label smoothing) when the profile turns them on.

Bookkeeping is deliberately lean (the throughput benchmark compares this step with a bare PyTorch
loop): no Lightning logger and no `self.log`; losses and accuracy counts are summed on the device
and read once per epoch (plus a cheap finiteness check every `nan_check_every` steps). One row per
epoch goes to `history`, which is stored inside the checkpoint, so `metrics.csv` is rebuilt
identically after a resume, and written atomically to `metrics_path` on rank 0.

A non-finite training loss is not an exception: the run stops, `diverged_at_step` records where,
and the train stage writes the status `diverged` for the summary and the report to show.

The same module trains a ViT (`model.variant: vit_*`, `normrepro.tasks.image_classification.vit`) on the same data
with the same recipe; only `build_model` differs.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from normrepro.tasks.image_classification.data import augment_tensor_batch, dataset_spec
from normrepro.tasks.image_classification.model import accuracy_counts, build_model, param_groups
from normrepro.tasks.image_classification.metrics import write_metrics_csv

class WarmupCosine:
    """LR multiplier per optimizer step: linear warm-up to 1, then cosine down to `min_ratio`.

    A small class rather than a lambda so LambdaLR can store its state in the checkpoint.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def effective_batch(cfg: dict, world_size: int) -> int:
    """Images per optimizer step: per-device batch × devices × nodes × gradient accumulation."""
    return (int(cfg["data"]["batch_size"]) * int(world_size)
            * int(cfg["trainer"].get("accumulate_grad_batches", 1)))


def scaled_lr(cfg: dict, world_size: int) -> float:
    """The peak learning rate of a run.

    `optim.lr` set: that absolute value (the cpu profile's per-arm values, chosen on held-out
    data by `make sweep-convnext`). `optim.lr` null: the linear scaling rule of Goyal et al. 2017,
    base_lr × effective batch / base_batch, which moves the paper's lr 4e-3 at batch 4096 to
    another batch size (the ConvNeXt code itself takes an absolute lr and never rescales it).
    """
    optim = cfg["optim"]
    if optim.get("lr") is not None:
        return float(optim["lr"])
    return float(optim["base_lr"]) * effective_batch(cfg, world_size) / float(optim["base_batch"])


def memory_format(cfg: dict) -> torch.memory_format:
    """The layout the model and its inputs use: `model.channels_last` true/false, or null (auto).

    A layout is not a semantic choice (every op computes the same function), only a speed one;
    auto picks channels-last on CPU, where the block MLP's GEMMs (`PointwiseConv2d`) and the
    norms then run without layout copies (measured ~1.15x faster for LN and BN on
    convnext_atto at 32 x 32), and timm's default NCHW on GPU.
    """
    choice = cfg["model"].get("channels_last")
    if choice is None:
        from normrepro.tasks.image_classification.run_config import uses_gpu

        choice = not uses_gpu(cfg)
    return torch.channels_last if choice else torch.contiguous_format


def input_size(data_cfg: dict) -> int:
    """The side of the square images the model sees: `data.image_size`, or the data set's own."""
    return int(data_cfg.get("image_size") or dataset_spec(data_cfg["dataset"]).image_size)


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A well-mixed 32-bit seed that depends only on where in training a step is."""
    return int(np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(1)[0])


def reseed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class ConvNeXtClassifier(L.LightningModule):
    """One arm of the replication: `cfg` is the resolved run config (see replications/convnext)."""

    def __init__(self, cfg: dict, num_classes: int, in_chans: int, mean, std, backend: str,
                 metrics_path: str | Path | None = None):
        super().__init__()
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self.backend = backend
        self.aug = dict(cfg["data"].get("augment") or {})
        self.model = build_model(cfg["model"], num_classes, in_chans, input_size(cfg["data"]))
        self.memory_format = memory_format(cfg)
        self.model = self.model.to(memory_format=self.memory_format)
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.label_smoothing = float(cfg["optim"].get("label_smoothing", 0.0))
        self.mixup = None
        mix, cut = float(self.aug.get("mixup", 0.0)), float(self.aug.get("cutmix", 0.0))
        if mix > 0 or cut > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=mix, cutmix_alpha=cut,
                               prob=float(self.aug.get("mixup_prob", 1.0)),
                               switch_prob=float(self.aug.get("mixup_switch_prob", 0.5)),
                               label_smoothing=self.label_smoothing, num_classes=num_classes)
        self.eraser = None
        if backend == "tensor" and float(self.aug.get("random_erasing", 0.0)) > 0:
            from timm.data.random_erasing import RandomErasing

            # device=None: erase with noise created on the input's own device.
            self.eraser = RandomErasing(float(self.aug["random_erasing"]), mode="pixel",
                                        device=None)
        self.nan_check_every = int(cfg["trainer"].get("nan_check_every", 50))
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.history: list[dict] = []
        self.diverged_at_step: int | None = None
        self._reset_train_sums()
        self._val_sums: torch.Tensor | None = None
        self._val_result: dict | None = None
        self._epoch_t0: float | None = None
        self._train_t1: float | None = None

    # ---------------------------------------------------------------- batches and loss
    def _reset_train_sums(self) -> None:
        self._train_loss_sum = None  # tensor on the training device, created lazily
        self._train_count = 0

    def prepare_train_batch(self, batch, batch_idx: int):
        """Reseed, augment on the device (tensor backend) and apply Mixup/CutMix.

        Returns (inputs, targets, soft) where soft tells whether targets are mixed soft labels.
        Shared with the benchmark's bare loop so both sides do the same work.
        """
        x, y = batch
        reseed_all(step_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))
        if self.backend == "tensor":
            x = augment_tensor_batch(x, self.aug, self.norm_mean, self.norm_std, True, self.eraser)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
            return x.contiguous(memory_format=self.memory_format), y, True
        return x.contiguous(memory_format=self.memory_format), y, False

    def loss_fn(self, logits: torch.Tensor, target: torch.Tensor, soft: bool) -> torch.Tensor:
        if soft:
            return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int):
        if self._epoch_t0 is None:  # resumed at an epoch boundary: no epoch-start hook ran
            self._epoch_t0 = time.perf_counter()
        x, target, soft = self.prepare_train_batch(batch, batch_idx)
        loss = self.loss_fn(self.model(x), target, soft)
        n = x.shape[0]
        summed = loss.detach() * n
        self._train_loss_sum = summed if self._train_loss_sum is None else self._train_loss_sum + summed
        self._train_count += n
        if self.nan_check_every > 0 and (self.global_step + 1) % self.nan_check_every == 0:
            self._stop_if_diverged(self._train_loss_sum)
        return loss

    def _stop_if_diverged(self, value: torch.Tensor | None) -> bool:
        bad = value is not None and not bool(torch.isfinite(value).all())
        # Every rank checks at the same steps; agree so all stop together.
        bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad and self.diverged_at_step is None:
            self.diverged_at_step = int(self.global_step)
            self.trainer.should_stop = True
        return bad

    def prepare_eval_batch(self, batch):
        x, y = batch
        if self.backend == "tensor":
            x = augment_tensor_batch(x, self.aug, self.norm_mean, self.norm_std, False)
        return x.contiguous(memory_format=self.memory_format), y

    def validation_step(self, batch, batch_idx: int):
        x, y = self.prepare_eval_batch(batch)
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        top1, top5 = accuracy_counts(logits, y)
        sums = torch.stack([loss.detach(), top1.float(), top5.float(),
                            torch.tensor(float(len(y)), device=loss.device)])
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    # ---------------------------------------------------------------- epoch bookkeeping
    def on_train_start(self) -> None:
        if self.diverged_at_step is not None:  # resumed a run that had already diverged
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()
        self._train_t1 = None
        self._reset_train_sums()

    def on_validation_epoch_start(self) -> None:
        self._train_t1 = time.perf_counter()  # the epoch's training batches are done
        self._val_sums = None

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums
        if sums is None:
            sums = torch.zeros(4, device=self.device)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss, top1, top5, n = (float(v) for v in sums.cpu())
        self._val_result = None if n == 0 else {
            "val_loss": loss / n, "val_top1": 100.0 * top1 / n, "val_top5": 100.0 * top5 / n}
        self._val_sums = None

    def on_train_epoch_end(self) -> None:
        now = time.perf_counter()
        t0 = self._epoch_t0 if self._epoch_t0 is not None else now
        train_time = (self._train_t1 or now) - t0
        loss_sum = self._train_loss_sum if self._train_loss_sum is not None else \
            torch.zeros((), device=self.device)
        stacked = torch.stack([loss_sum.float(), torch.tensor(float(self._train_count),
                                                              device=loss_sum.device)])
        loss_sum, count = (float(v) for v in self.trainer.strategy.reduce(stacked, reduce_op="sum"))
        self._stop_if_diverged(torch.tensor(loss_sum))
        val = self._val_result or {"val_loss": math.nan, "val_top1": math.nan, "val_top5": math.nan}
        self.history.append({
            "epoch": self.current_epoch + 1,
            "step": int(self.global_step),
            "train_loss": loss_sum / count if count else math.nan,
            **val,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "epoch_time_s": now - t0,
            "train_time_s": train_time,
            "train_images_per_s": count / train_time if train_time > 0 else math.nan,
        })
        self._val_result = None
        self._epoch_t0 = None
        self._reset_train_sums()
        if self.trainer.is_global_zero:
            if self.metrics_path is not None:
                write_metrics_csv(self.metrics_path, self.history)
            if self.cfg["trainer"].get("print_epochs", True):
                row = self.history[-1]
                print(f"[train] epoch {row['epoch']}/{self.trainer.max_epochs}  "
                      f"train_loss {row['train_loss']:.4f}  val_top1 {row['val_top1']:.2f}  "
                      f"lr {row['lr']:.2e}  {row['epoch_time_s']:.1f} s "
                      f"({row['train_images_per_s']:.0f} img/s)", flush=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["normrepro_history"] = [dict(row) for row in self.history]
        checkpoint["normrepro_diverged_at_step"] = self.diverged_at_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = [dict(row) for row in checkpoint.get("normrepro_history", [])]
        self.diverged_at_step = checkpoint.get("normrepro_diverged_at_step")

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        opt, sched = build_optimizer(self.cfg, self.model, self.trainer.world_size,
                                     int(self.trainer.estimated_stepping_batches),
                                     int(self.trainer.max_epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_optimizer(cfg: dict, model: torch.nn.Module, world_size: int, total_steps: int,
                    max_epochs: int):
    """AdamW over `param_groups` and the per-step warm-up + cosine LambdaLR.

    Used by the LightningModule and by the benchmark's bare loop, so both optimise identically.
    """
    optim = cfg["optim"]
    lr = scaled_lr(cfg, world_size)
    opt = torch.optim.AdamW(param_groups(model, float(optim["weight_decay"])), lr=lr,
                            betas=tuple(optim.get("betas", (0.9, 0.999))),
                            eps=float(optim.get("eps", 1e-8)),
                            foreach=True)  # (the same bits as torch's CPU default loop, faster)
    per_epoch = total_steps / max(1, max_epochs)
    warmup = int(round(float(optim.get("warmup_epochs", 0)) * per_epoch))
    min_ratio = float(optim.get("min_lr", 0.0)) / lr if lr > 0 else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup, total_steps, min_ratio))
    return opt, sched
