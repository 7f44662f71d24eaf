"""Train one arm × seed with Lightning; resume it if it was interrupted.

    python -m normrepro.translation.train RUN_DIR --data data/processed/bible-de-en

RUN_DIR must hold the resolved `config.yaml` (`python -m normrepro.config resolve ...`). Writes
`metrics.csv` and weight snapshots during training (see `module.RunRecorder`), a resumable
Lightning checkpoint `checkpoints/last.ckpt` every `trainer.resume_every_updates` updates and at
every validation, and finally `train.json` (status ok/diverged, updates, epochs, wall time,
tokens/s), which marks the run as trained. If `train.json` is missing but `last.ckpt` exists, the
run continues from it (same batches, same dropout masks, see `datamodule` and `module`).

The prepared data is checked against its MANIFEST.json (file sizes and hashes) first. The run's
stamp `checkpoints/config.yaml` holds the training-relevant config and the data's fingerprint
(`normrepro.rundir`): when either changed, the old run is moved aside to `RUN_DIR.replaced-<time>/`
and training starts over; an unreadable `last.ckpt` is set aside and training restarts.

Stopping: `trainer.max_updates` (fairseq `--max-update`), `trainer.max_epochs`, early stopping
after `trainer.early_stop_patience` validations without a lower validation loss. Validation runs
every epoch, or every `trainer.val_every_updates` updates when that is set (short runs, where
the last five snapshots must not be five epochs apart).

Precision: `trainer.precision: auto` is bf16-mixed on a GPU, fp32 on CPU. Several GPUs: DDP
through Lightning (`trainer.devices`), batches sharded by the data module's sampler.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from normrepro import schema
from normrepro.errors import UserError, cli
from normrepro.io import atomic_write_json
from normrepro.rundir import stamp_text, sync_stamp
from normrepro.translation.common import (LOG, load_config, model_args, quiet_logging, run_paths,
                                          set_threads, verified_data)


# Config keys that do not change what training produces (changing them does not retrain).
NOT_TRAINING = schema.NOT_TRAINING["powernorm"]
# What an unfinished training leaves besides checkpoints/ (cleared when it starts over).
PARTIAL = ("metrics.csv", "hyps")


def _precision(value: str) -> str:
    if value in (None, "auto"):
        return "bf16-mixed" if torch.cuda.is_available() else "32-true"
    return str(value)


def build(cfg: dict, data_dir: Path, run_dir: Path, record: bool = True):
    """(trainer, module, datamodule, recorder) for a resolved config. `record=False` (benchmarks):
    no validation, no metrics, snapshots or checkpoints."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from normrepro.translation.datamodule import datamodule_from_config
    from normrepro.translation.module import RunRecorder, TranslationModule

    quiet_logging()  # again: lightning installed its own INFO handler on import

    seed = int(cfg["seed"])
    t, o = cfg["trainer"], cfg["optim"]
    L.seed_everything(seed, workers=True, verbose=False)
    dm = datamodule_from_config(data_dir, cfg)
    # fairseq seeds the model initialisation with the run seed too.
    torch.manual_seed(seed)
    module = TranslationModule(model_args(cfg), dm.dictionary, o, label_smoothing=o.get("label_smoothing", 0.1),
                               seed=seed, val_bleu=cfg.get("val_bleu"))
    paths = run_paths(run_dir)
    recorder = RunRecorder(run_dir, keep=int(t.get("keep_snapshots", 5)))
    resume_ckpt = ModelCheckpoint(dirpath=paths["checkpoints"], filename="last", save_top_k=0, save_last=True,
                                  every_n_train_steps=int(t.get("resume_every_updates") or 0) or None,
                                  enable_version_counter=False)
    callbacks = [recorder, resume_ckpt] if record else []
    if record:
        from normrepro.progress import training_progress

        callbacks.append(training_progress(f"[train] {run_dir}"))
    if t.get("early_stop_patience") and record:
        callbacks.append(EarlyStopping("val_loss", patience=int(t["early_stop_patience"]), mode="min",
                                       check_finite=False))
    val_every = t.get("val_every_updates")
    devices = t.get("devices", "auto")
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        devices = 1
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=int(t.get("num_nodes") or 1),
        strategy="ddp" if accelerator == "gpu" and (int(t.get("num_nodes") or 1) > 1 or (
            devices not in (1, "1") and torch.cuda.device_count() > 1)) else "auto",
        precision=_precision(t.get("precision", "auto")),
        max_steps=int(t.get("max_updates") or -1), max_epochs=int(t.get("max_epochs") or 10_000),
        val_check_interval=int(val_every) if val_every else None,
        check_val_every_n_epoch=None if val_every else 1,
        gradient_clip_val=float(o.get("clip_norm") or 0) or None, gradient_clip_algorithm="norm",
        num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=callbacks, logger=False,
        limit_val_batches=None if record else 0, enable_checkpointing=record,
        enable_progress_bar=bool(t.get("progress_bar", False)), enable_model_summary=False,
        default_root_dir=str(run_dir), deterministic=False,
    )
    return trainer, module, dm, recorder


def train_run(run_dir: Path, data_dir: Path, process_start: float | None = None) -> dict:
    """Fit (or resume) the run; `process_start` (time.time() at process start) makes the recorded
    wall time include start-up (imports, data loading, compilation)."""
    paths = run_paths(run_dir)
    cfg = load_config(paths["config"])
    set_threads(cfg["trainer"].get("threads"))
    trainer, module, dm, recorder = build(cfg, data_dir, run_dir)
    ckpt = paths["last"] if paths["last"].is_file() else None
    if ckpt is not None:
        LOG.info("resuming %s from %s", run_dir, ckpt)
    started = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    # Time before an interruption is known up to the last validation (the metrics row).
    wall = recorder.wall_offset + time.time() - (process_start or started)
    rows = recorder.rows
    finite = [r for r in rows if math.isfinite(float(r["val_loss"]))]
    status = "diverged" if module.diverged else "ok"
    summary = {
        "status": status,
        "updates": int(trainer.global_step),
        "stopped_by": _stop_reason(trainer, cfg),
        "wall_time_s": round(wall, 1),
        "train_tokens": int(sum(int(r["train_tokens"]) for r in rows)),
        "best_val_loss": min((float(r["val_loss"]) for r in finite), default=None),
        "last_val_loss": float(rows[-1]["val_loss"]) if rows else None,
        "dropped_train_sentences": dm.dropped_train,
        "batches_per_epoch": len(dm.train_sampler) if dm.train_sampler is not None else None,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "precision": trainer.precision,
        "world_size": trainer.world_size,
        "resumed": ckpt is not None,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(process_start or started)),
    }
    summary["train_tokens_per_s"] = summary["train_tokens"] / wall if wall > 0 else None
    if summary["batches_per_epoch"]:
        summary["epochs"] = round(summary["updates"] / summary["batches_per_epoch"], 3)
    if trainer.is_global_zero:
        atomic_write_json(paths["train"], summary)
    return summary


def _stop_reason(trainer, cfg) -> str:
    t = cfg["trainer"]
    if getattr(trainer.lightning_module, "diverged", False):
        return "diverged"
    if t.get("max_updates") and trainer.global_step >= int(t["max_updates"]):
        return "max_updates"
    for cb in trainer.callbacks:
        if type(cb).__name__ == "EarlyStopping" and getattr(cb, "stopped_epoch", 0):
            return "early_stopping"
    return "max_epochs"


@cli
def main(argv: list[str] | None = None) -> int:
    process_start = time.time()
    parser = argparse.ArgumentParser(prog="python -m normrepro.translation.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="folder with the resolved config.yaml")
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    args = parser.parse_args(argv)
    quiet_logging()
    paths = run_paths(args.run_dir)
    if not paths["config"].is_file():
        raise UserError(f"{paths['config']} not found; resolve the run config first "
                        "(make does; or python -m normrepro.config resolve ...)")
    # A run trained (or half trained) under a different config or data is moved aside and
    # started over instead of resumed. The stamp holds the training-relevant config (not
    # eval/report settings, so that a new beam size re-evaluates without retraining) and the
    # fingerprint of the data, whose files are checked against its manifest here.
    cfg = load_config(paths["config"])
    _, fingerprint = verified_data(args.data)
    state = sync_stamp(args.run_dir, stamp_text(cfg, NOT_TRAINING, fingerprint),
                       finished=("train.json",), partial=PARTIAL)
    if state == "done":
        print(f"[train] {args.run_dir} is already trained with this config and data", flush=True)
        os.utime(paths["train"])  # tell make it is up to date
        return 0
    summary = train_run(args.run_dir, args.data, process_start)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
