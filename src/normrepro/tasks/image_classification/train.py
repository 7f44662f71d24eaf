"""This task's half of the `train` stage (`python -m normrepro.stages.train RUN`): train one
arm × seed from RUN/config.yaml; resume if interrupted.

Writes into RUN:
  checkpoints/last.ckpt   every epoch (Lightning writes it to a temp file, then renames)
  checkpoints/config.yaml the config the checkpoint belongs to
  metrics.csv             one row per epoch (columns: normrepro.tasks.image_classification.metrics.METRIC_COLUMNS)
  env.json                last, when training ended: provenance plus `train` = status, epochs,
                          time; it is the make target, so a run that was killed has none and is
                          resumed by the next `make`
  final.json              only if the run diverged (status "diverged"); evaluate writes it
                          otherwise

A rerun with the same config and data resumes from `checkpoints/last.ckpt` (Lightning's
`ckpt_path`), and a finished run (env.json present) is left as it is. The run's stamp,
`checkpoints/config.yaml`, holds the training-relevant config and the fingerprint of the data
(`normrepro.rundir`): when either changed, the old run is moved aside to
`<run>.replaced-<time>/` (one line says why) and training starts over; an unreadable `last.ckpt`
is set aside with a warning and training restarts. The processed data is checked against its
prepared.json (sizes and hashes) before use.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from normrepro import schema
from normrepro.tasks.image_classification.data import data_fingerprint
from normrepro.tasks.image_classification.datamodule import ConvNeXtDataModule
from normrepro.tasks.image_classification.model import count_parameters
from normrepro.tasks.image_classification.module import ConvNeXtClassifier, effective_batch, scaled_lr
from normrepro.tasks.image_classification.run_config import check_config, load_run_config, resolve_precision, uses_gpu
from normrepro.tasks.image_classification import check_data_arg
from normrepro.io import atomic_write_json, read_json
from normrepro.progress import quiet_libraries, training_progress
from normrepro.provenance import write_env_json
from normrepro.rundir import stamp_text, sync_stamp
from normrepro.runtime import launch_rank

# Config keys that do not change what training produces: changing them does not retrain.
NOT_TRAINING = schema.NOT_TRAINING["image_classification"]
# What a training leaves besides checkpoints/ before it finishes (cleared on a fresh start).
PARTIAL = ("metrics.csv", "final.json")

def trainer_kwargs(cfg: dict) -> dict:
    """Lightning Trainer arguments from `cfg["trainer"]`, lean by default (see module.py)."""
    t = cfg["trainer"]
    val_size = int(cfg["data"].get("val_size", 0))
    return dict(
        accelerator=t.get("accelerator", "auto"),
        devices=t.get("devices", "auto"),
        num_nodes=int(t.get("num_nodes", 1)),
        strategy=t.get("strategy", "auto"),
        precision=resolve_precision(cfg),
        max_epochs=int(t["max_epochs"]),
        # Per-worker BN statistics by default, as in the paper; sync is an option.
        sync_batchnorm=bool(t.get("sync_batchnorm", False)),
        accumulate_grad_batches=int(t.get("accumulate_grad_batches", 1)),
        gradient_clip_val=t.get("gradient_clip_val"),
        deterministic=bool(t.get("deterministic", False)),
        benchmark=bool(t.get("cudnn_benchmark", uses_gpu(cfg))),
        logger=False,
        enable_progress_bar=bool(t.get("progress_bar", False)),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_size > 0 else 0,
        # Our sampler shards by rank itself and is deterministic per epoch (resume-exact).
        use_distributed_sampler=False,
    )


def train(cfg: dict, out: str | Path, callbacks: list | None = None,
          partial: tuple[str, ...] = ()) -> dict:
    """Train (or resume) one run; returns the `train` record written into env.json.

    A run already finished with this config and data is not trained again: its record is
    returned (with `up_to_date: true`). `partial`: more files the caller writes during training
    (e.g. a recorder's CSV), cleared with the others when an unfinished run starts over.
    """
    started = time.time()
    cfg = check_config(cfg, str(Path(out) / "config.yaml"))
    quiet_libraries()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    # Checks the processed files against prepared.json before anything here changes.
    fingerprint = data_fingerprint(cfg["data"])
    stamp = stamp_text(cfg, NOT_TRAINING, fingerprint)
    # Under DDP every rank runs this function; only the first one touches the folder.
    if launch_rank() == 0:
        state = sync_stamp(out, stamp, finished=("env.json",), partial=PARTIAL + tuple(partial))
        if state == "done":
            os.utime(out / "env.json")  # up to date: tell make so
            print(f"[train] {out} is already trained with this config and data", flush=True)
            return {**read_json(out / "env.json").get("train", {}), "up_to_date": True}
    resume = last if last.exists() else None

    if cfg["trainer"].get("threads"):
        # Fixed per run (numbers depend on it at the last bit): the cpu profile runs two
        # one-thread trainings at a time, which is faster on 2 cores than one two-thread run.
        torch.set_num_threads(int(cfg["trainer"]["threads"]))
    if uses_gpu(cfg):
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls left outside autocast
    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    dm = ConvNeXtDataModule(cfg["data"], cfg["seed"], cfg["data"]["batch_size"])
    mean, std = dm.norm_stats()
    module = ConvNeXtClassifier(cfg, dm.num_classes, dm.in_chans, mean, std, dm.backend,
                                metrics_path=out / "metrics.csv")
    # No monitor + save_top_k=1 + a fixed name: Lightning overwrites checkpoints/last.ckpt at the
    # end of every epoch (temp file, then rename). Saving at train-epoch end, after
    # the module's on_train_epoch_end, puts that epoch's metrics row into the checkpoint.
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                 save_last=False, save_on_train_epoch_end=True,
                                 enable_version_counter=False)
    progress = training_progress(f"[train] {out}")
    trainer = L.Trainer(default_root_dir=str(out),
                        callbacks=[checkpoint, progress, *(callbacks or [])],
                        **trainer_kwargs(cfg))
    if resume is not None:
        print(f"[train] resuming {out} from {resume}", flush=True)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)

    history = module.history
    status = "diverged" if module.diverged_at_step is not None else "ok"
    record = {
        "status": status,
        "epochs_completed": len(history),
        "max_epochs": int(cfg["trainer"]["max_epochs"]),
        "diverged_at_step": module.diverged_at_step,
        "train_time_s": float(sum(r["epoch_time_s"] for r in history)),
        "resumed": resume is not None,
        "world_size": trainer.world_size,
        "precision": resolve_precision(cfg),
        "effective_batch": effective_batch(cfg, trainer.world_size),
        "lr": scaled_lr(cfg, trainer.world_size),
        "parameters": count_parameters(module.model),
        "split_sizes": dm.split_sizes,
    }
    if status == "ok" and len(history) < record["max_epochs"]:
        raise RuntimeError(f"training of {out} stopped after {len(history)} of "
                           f"{record['max_epochs']} epochs without diverging; rerun to resume")
    if trainer.is_global_zero:
        if status == "diverged":
            atomic_write_json(out / "final.json", {
                "status": "diverged", "dataset": cfg["data"]["dataset"], "arm": cfg.get("arm"),
                "seed": int(cfg["seed"]), "diverged_at_step": module.diverged_at_step,
                "epochs_completed": len(history), "test_top1": None, "test_top5": None})
            print(f"[train] {out}: loss became non-finite at step {module.diverged_at_step}; "
                  "recorded as diverged", flush=True)
        write_env_json(out / "env.json", wall_time_s=time.time() - started, train=record,
                       run={"dataset": cfg["data"]["dataset"], "arm": cfg.get("arm"),
                            "seed": int(cfg["seed"]), "variant": cfg["model"]["variant"],
                            "norm": cfg["model"]["norm"], "data_fingerprint": fingerprint})
    return record


def run_stage(run_dir: Path, data: Path | None = None, process_start: float | None = None) -> int:
    """The `train` stage for one run folder (its config.yaml); `data`, when given, must be the
    processed folder the config names."""
    cfg = load_run_config(run_dir / "config.yaml")
    check_data_arg(cfg, run_dir, data)
    record = train(cfg, run_dir)
    if not record.get("up_to_date"):
        print(f"[train] {run_dir}: {record['status']}, {record['epochs_completed']} epochs, "
              f"{record['train_time_s']:.0f} s of training", flush=True)
    return 0
