"""This task's half of the `train` stage: train one arm × seed with Lightning; resume it if it
was interrupted.

    python -m normrepro.stages.train RUN_DIR [--data data/processed/bible-de-en]

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

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

from normrepro import schema
from normrepro.errors import UserError
from normrepro.tasks.translation import data_dir
from normrepro.io import atomic_write_json, read_json
from normrepro.rundir import stamp_text, sync_stamp
from normrepro.runtime import resolve_precision
from normrepro.tasks.translation.common import (LOG, load_config, model_args, quiet_logging, run_paths,
                                          set_threads, verified_data)


# Config keys that do not change what training produces (changing them does not retrain).
NOT_TRAINING = schema.NOT_TRAINING["translation"]
# What an unfinished training leaves besides checkpoints/ (cleared when it starts over).
PARTIAL = ("metrics.csv", "hyps")


def build(cfg: dict, data_dir: Path, run_dir: Path, record: bool = True):
    """(trainer, module, datamodule, recorder) for a resolved config. `record=False` (benchmarks):
    no validation, no metrics, snapshots or checkpoints."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from normrepro.tasks.translation.datamodule import datamodule_from_config
    from normrepro.tasks.translation.module import RunRecorder, TranslationModule

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
        precision=resolve_precision(t.get("precision"), torch.cuda.is_available()),
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


def train(cfg: dict, run_dir: str | Path, data: str | Path, callbacks: Sequence = (),
          partial: tuple[str, ...] = (), process_start: float | None = None) -> dict:
    """Train (or resume) one run and write its done-marker `train.json`; returns its content.

    Owns the skip and the restart: a run already trained with this config and data is not
    trained again (the record comes back with `up_to_date: true`); one trained (or half trained)
    under another config or data is moved aside and started over; otherwise an interrupted run
    resumes from `checkpoints/last.ckpt`. The stamp holds the training-relevant config (not
    eval/report settings, so that a new beam size re-evaluates without retraining) and the
    fingerprint of the data, whose files are checked against its manifest first. `callbacks`:
    more Lightning callbacks (e.g. an insights recorder); `partial`: files they write, cleared
    with the others when an unfinished run starts over.
    """
    run_dir, data = Path(run_dir), Path(data)
    paths = run_paths(run_dir)
    _, fingerprint = verified_data(data)
    state = sync_stamp(run_dir, stamp_text(cfg, NOT_TRAINING, fingerprint),
                       finished=("train.json",), partial=PARTIAL + tuple(partial))
    if state == "done":
        os.utime(paths["train"])  # tell make it is up to date
        return {**read_json(paths["train"]), "up_to_date": True}
    return train_run(run_dir, data, process_start, callbacks)


def train_run(run_dir: Path, data_dir: Path, process_start: float | None = None,
              callbacks: Sequence = ()) -> dict:
    """Fit (or resume) the run, whatever its stamp says (`train` checks it first);
    `process_start` (time.time() at process start) makes the recorded wall time include
    start-up (imports, data loading, compilation)."""
    paths = run_paths(run_dir)
    cfg = load_config(paths["config"])
    set_threads(cfg["trainer"].get("threads"))
    trainer, module, dm, recorder = build(cfg, data_dir, run_dir)
    trainer.callbacks.extend(callbacks)
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


def run_stage(run_dir: Path, data: Path | None = None, process_start: float | None = None) -> int:
    """The `train` stage for one run folder; `data` defaults to the folder its config names."""
    quiet_logging()
    paths = run_paths(run_dir)
    if not paths["config"].is_file():
        raise UserError(f"{paths['config']} not found; resolve the run config first "
                        "(make does; or python -m normrepro.config resolve ...)")
    cfg = load_config(paths["config"])
    data = Path(data) if data is not None else data_dir(cfg)
    summary = train(cfg, run_dir, data, process_start=process_start)
    if summary.get("up_to_date"):
        print(f"[train] {run_dir} is already trained with this config and data", flush=True)
    else:
        print(json.dumps(summary))
    return 0
